//! Chaos: the real binaries — two notify-svc replicas, two bridges, a
//! bet-tracker and BetService's stand-in (`bet-tracker simulate`) on a
//! Postgres server of the test's own — with WebSocket clients that reconnect
//! and resume, producers that publish with idempotency keys and retry every
//! failed call with the same key, and a driver that kill -9s and restarts
//! replicas, bridges and the tracker throughout and crashes Postgres once
//! (`-m immediate`) halfway. One user in five stays offline until the end.
//! At the end every client drains its inbox; the accounting says whether any
//! publish that was answered OK failed to arrive, and whether every fight
//! change became exactly one `fights:live` message.
//!
//! It runs twice: straight to Postgres, and through pgbouncer in transaction
//! pooling mode (the RDS Proxy stand-in). CI size by default (20,000
//! messages, 40 clients, a kill every 0.6 s); bigger with
//! `CHAOS_MESSAGES=100000 CHAOS_CLIENTS=500 cargo nextest run --test chaos`.

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use serde_json::Value;
use test_support::{
    TestDir,
    cluster::{PgCluster, Pgbouncer},
    free_port,
    process::{ServiceProcess as Proc, sibling_binary},
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn binary(name: &str) -> PathBuf {
    sibling_binary(env!("CARGO_BIN_EXE_notify"), name)
}

#[derive(Default)]
struct Tally {
    published: AtomicU64,
    acknowledged: AtomicU64,
    failed_calls: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    max_gap: AtomicU64,
    kills: AtomicU64,
    revived: AtomicU64,
}

/// What each user's client has seen: seqs, and the highest contiguous one.
#[derive(Default)]
struct Seen {
    seqs: BTreeSet<u64>,
    contiguous: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_messages_survive_kills_of_every_process_and_a_postgres_crash() {
    chaos(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_chaos_through_pgbouncer_in_transaction_mode() {
    chaos(true).await;
}

async fn chaos(through_pgbouncer: bool) {
    let size = Size {
        messages: env_or("CHAOS_MESSAGES", 20_000),
        clients: env_or("CHAOS_CLIENTS", 40),
        producers: env_or("CHAOS_PRODUCERS", 16),
    };
    let cluster = PgCluster::start();
    let bouncer = through_pgbouncer.then(|| Pgbouncer::start(&cluster));
    let db_url = bouncer.as_ref().map_or(&cluster.url, |b| &b.url).clone();
    let data = TestDir::create("chaos");
    let mut fleet = Fleet::start(&db_url, &data).await;
    let users: Vec<String> = (0..size.clients).map(|i| format!("chaos-{i}")).collect();
    let ledger = Ledger::default();
    // Offline users connect only once the chaos is over.
    let online = tokio_util::sync::CancellationToken::new();
    let clients = spawn_clients(&fleet.ws, &users, &data, &ledger, &online);
    let next = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..size.producers)
        .map(|p| {
            tokio::spawn(produce(
                p,
                size.messages,
                fleet.grpc.clone(),
                users.clone(),
                ledger.clone(),
                next.clone(),
            ))
        })
        .collect();
    fleet
        .kill_while_producing(&cluster, &producers, &next, &ledger.tally, size.messages)
        .await;
    for t in producers {
        t.await.unwrap();
    }
    online.cancel();
    let accounting = ledger.drained(Duration::from_secs(120)).await;
    accounting.report(&size, through_pgbouncer);
    accounting.assert_nothing_lost_or_doubled(size.messages);
    for t in clients {
        t.abort();
    }
    fights_were_each_emitted_once(&db_url, &fleet.grpc[0], &mut fleet.tracker).await;
    fleet.kill_all().await;
}

/// How much chaos: messages published, clients reading, producers writing.
struct Size {
    messages: usize,
    clients: usize,
    producers: usize,
}

/// The real binaries: two notify-svc replicas, two bridges, the tracker and
/// BetService's stand-in.
struct Fleet {
    grpc: Vec<String>,
    ws: Vec<String>,
    svcs: Vec<Proc>,
    bridges: Vec<Proc>,
    tracker: Proc,
    simulation: Proc,
}

impl Fleet {
    async fn start(db_url: &str, data: &TestDir) -> Self {
        let grpc: Vec<String> = (0..2)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut svcs: Vec<Proc> = grpc
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                Proc::new(&format!("notify-svc-{i}"), binary("notify-svc"))
                    .arg("--dev")
                    .arg("--grpc-addr")
                    .arg(addr)
                    .arg("--http-addr")
                    .arg(format!("127.0.0.1:{}", free_port()))
                    .arg("--database-url")
                    .arg(db_url)
            })
            .collect();
        let urls = grpc
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let ws: Vec<String> = (0..2)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut bridges: Vec<Proc> = ws
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                Proc::new(&format!("bridge-{i}"), binary("bridge"))
                    .env("BRIDGE_WS_ADDR", addr)
                    .env("BRIDGE_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
                    .env("BRIDGE_NOTIFY_URLS", &urls)
                    .env("BRIDGE_ID", format!("chaos-bridge-{i}"))
                    .env("BRIDGE_DATA_DIR", data.path.display().to_string())
                    .env("AUTH_DEV", "1")
                    .env("BRIDGE_RATE", "10000")
                    .env("BRIDGE_CONNECT_RATE_PER_IP", "0")
            })
            .collect();
        for p in svcs.iter_mut().chain(bridges.iter_mut()) {
            p.start();
        }
        // The tracker and the simulation need the fights tables: wait for the
        // replicas' migrations (notify-svc answers only once they are done).
        test_support::eventually("notify-svc serves", Duration::from_secs(60), || {
            let url = format!("http://{}", grpc[0]);
            async move {
                lobby_head(&mut NotifyClient::connect(url).await.ok()?)
                    .await
                    .ok()
            }
        })
        .await;
        let mut tracker = Proc::new("bet-tracker", binary("bet-tracker"))
            .env("DATABASE_URL", db_url)
            .env("TRACKER_NOTIFY_URL", format!("http://{}", grpc[1]))
            .env("TRACKER_ID", "chaos-tracker")
            .env("TRACKER_LEASE_MS", "1000")
            .env("TRACKER_HTTP_ADDR", format!("127.0.0.1:{}", free_port()));
        // BetService's stand-in: fight changes at a steady rate.
        let mut simulation = Proc::new("bet-tracker simulate", binary("bet-tracker"))
            .arg("simulate")
            .arg("--rate")
            .arg("100")
            .arg("--users")
            .arg("20")
            .env("DATABASE_URL", db_url);
        tracker.start();
        simulation.start();
        Self {
            grpc,
            ws,
            svcs,
            bridges,
            tracker,
            simulation,
        }
    }

    /// While producers run, kill -9 and restart a process (every fifth time
    /// the tracker); Postgres crashes once, halfway.
    async fn kill_while_producing(
        &mut self,
        cluster: &PgCluster,
        producers: &[tokio::task::JoinHandle<()>],
        next: &AtomicU64,
        tally: &Tally,
        messages: usize,
    ) {
        let started = Instant::now();
        let mut round = 0usize;
        let mut postgres_crashed = false;
        while !producers.iter().all(|t| t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(400)).await;
            round += 1;
            for p in self
                .svcs
                .iter_mut()
                .chain(self.bridges.iter_mut())
                .chain([&mut self.tracker, &mut self.simulation])
            {
                if p.revive() {
                    tally.revived.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !postgres_crashed && next.load(Ordering::Relaxed) as usize >= messages / 2 {
                postgres_crashed = true;
                cluster.crash();
                tokio::time::sleep(Duration::from_secs(1)).await;
                cluster.start_again();
                continue;
            }
            let victim = if round.is_multiple_of(5) {
                &mut self.tracker
            } else if round.is_multiple_of(2) {
                &mut self.svcs[round / 2 % 2]
            } else {
                &mut self.bridges[round / 2 % 2]
            };
            victim.kill9().await;
            tally.kills.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            victim.start();
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "producers did not finish in 10 min"
            );
        }
        self.simulation.kill9().await;
        assert!(postgres_crashed, "Postgres was crashed once");
    }

    async fn kill_all(&mut self) {
        for p in self
            .svcs
            .iter_mut()
            .chain(self.bridges.iter_mut())
            .chain([&mut self.tracker])
        {
            p.kill9().await;
        }
    }
}

/// What was answered OK per user (seqs), what each user's client has seen,
/// and the counts.
#[derive(Clone, Default)]
struct Ledger {
    expected: Arc<Mutex<HashMap<String, BTreeSet<u64>>>>,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    tally: Arc<Tally>,
}

/// The end of the chaos, counted.
struct Accounting {
    acknowledged: usize,
    /// Answered OK, never arrived.
    missing: usize,
    /// Arrived, but no publish was answered with it: a keyed retry that
    /// committed twice would show up here.
    unexpected: usize,
    tally: Arc<Tally>,
}

impl Ledger {
    /// Waits (up to `within`) until every client has every seq answered to
    /// its user; then counts.
    async fn drained(&self, within: Duration) -> Accounting {
        let deadline = Instant::now() + within;
        while self.missing() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Accounting {
            acknowledged: self.tally.acknowledged.load(Ordering::Relaxed) as usize,
            missing: self.missing(),
            unexpected: self.unexpected(),
            tally: self.tally.clone(),
        }
    }

    fn missing(&self) -> usize {
        let expected = self.expected.lock().unwrap();
        let seen = self.seen.lock().unwrap();
        expected
            .iter()
            .map(|(user, seqs)| {
                let got = seen.get(user).map(|s| &s.seqs);
                seqs.iter()
                    .filter(|s| !got.is_some_and(|g| g.contains(s)))
                    .count()
            })
            .sum()
    }

    fn unexpected(&self) -> usize {
        let expected = self.expected.lock().unwrap();
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|(user, s)| {
                let want = expected.get(user);
                s.seqs
                    .iter()
                    .filter(|q| !want.is_some_and(|w| w.contains(q)))
                    .count()
            })
            .sum()
    }
}

impl Accounting {
    fn report(&self, size: &Size, through_pgbouncer: bool) {
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let tally = &self.tally;
        println!(
            "chaos accounting ({} clients, {} producers, 2 notify-svc, 2 bridges, 1 tracker, Postgres {})",
            size.clients,
            size.producers,
            if through_pgbouncer {
                "through pgbouncer (transaction pooling)"
            } else {
                "direct"
            }
        );
        println!("  published         {}", count(&tally.published));
        println!("  acknowledged      {}", self.acknowledged);
        println!(
            "  failed calls      {} (each retried with its key)",
            count(&tally.failed_calls)
        );
        println!("  delivered         {}", count(&tally.delivered));
        println!("  lost              {}", self.missing);
        println!(
            "  unexpected        {} (stored twice despite the key)",
            self.unexpected
        );
        println!("  duplicates        {}", count(&tally.duplicates));
        println!("  max seq gap       {}", count(&tally.max_gap));
        println!(
            "  kills survived    {} (kill -9) + 1 Postgres crash",
            count(&tally.kills)
        );
        println!("  exited, restarted {}", count(&tally.revived));
    }

    fn assert_nothing_lost_or_doubled(&self, messages: usize) {
        assert_eq!(
            self.acknowledged, messages,
            "every publish was answered OK in the end"
        );
        assert_eq!(self.missing, 0, "an acknowledged message never arrived");
        assert_eq!(self.unexpected, 0, "a keyed publish was stored twice");
        assert_eq!(
            self.tally.max_gap.load(Ordering::Relaxed),
            0,
            "a session skipped seqs"
        );
    }
}

/// Clients: connect to a bridge, read, ack, and on any end reconnect to the
/// other one resuming after their last contiguous seq. One user in five is
/// offline until `online`: its whole inbox comes from storage.
fn spawn_clients(
    ws: &[String],
    users: &[String],
    data: &TestDir,
    ledger: &Ledger,
    online: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    // The dev key both bridges trust.
    let issuer = notify_auth::DevIssuer::load_or_create(
        &data.join(notify_auth::DEV_KEY_FILE),
        notify_auth::DEV_ISSUER,
        notify_auth::DEV_CLIENT_ID,
    )
    .unwrap();
    users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let token = issuer
                .mint(&notify_auth::DevToken {
                    ttl: Duration::from_secs(3600),
                    ..notify_auth::DevToken::access(user)
                })
                .unwrap();
            let (ws, ledger, user, online) =
                (ws.to_vec(), ledger.clone(), user.clone(), online.clone());
            tokio::spawn(async move {
                if i % 5 == 4 {
                    online.cancelled().await;
                }
                let mut attempt = i;
                loop {
                    let since = ledger
                        .seen
                        .lock()
                        .unwrap()
                        .get(&user)
                        .map_or(0, |s| s.contiguous);
                    let url = format!("ws://{}/ws?since={since}", ws[attempt % 2]);
                    attempt += 1;
                    session(&url, &token, &user, &ledger).await;
                }
            })
        })
        .collect()
}

/// One WebSocket session: reads and acks inbox messages until the socket
/// ends (or is silent for 30 s), noting duplicates and gaps.
async fn session(url: &str, token: &str, user: &str, ledger: &Ledger) {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let Ok(Ok((mut socket, _))) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    else {
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    };
    let tally = &ledger.tally;
    let mut last_in_session = None::<u64>;
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_secs(30), socket.next()).await
    {
        let Message::Text(text) = frame else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if v["type"] != "message" || !v["topic"].is_null() {
            continue;
        }
        let seq = v["seq"].as_u64().unwrap();
        {
            let mut seen = ledger.seen.lock().unwrap();
            let s = seen.entry(user.to_owned()).or_default();
            if !s.seqs.insert(seq) {
                tally.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                tally.delivered.fetch_add(1, Ordering::Relaxed);
            }
            while s.seqs.contains(&(s.contiguous + 1)) {
                s.contiguous += 1;
            }
        }
        // In one session seqs only go up by one (a repeat is a duplicate, a jump a gap).
        if let Some(last) = last_in_session
            && seq > last + 1
        {
            tally.max_gap.fetch_max(seq - last - 1, Ordering::Relaxed);
        }
        last_in_session = Some(last_in_session.map_or(seq, |l: u64| l.max(seq)));
        let _ = socket
            .send(Message::text(format!(r#"{{"action":"ack","seq":{seq}}}"#)))
            .await;
    }
}

/// A producer: keyed publishes to users in turn until `messages` are taken,
/// every failure retried with the same key on the other replica until it is
/// answered.
async fn produce(
    p: usize,
    messages: usize,
    grpc: Vec<String>,
    users: Vec<String>,
    ledger: Ledger,
    next: Arc<AtomicU64>,
) {
    let tally = &ledger.tally;
    let mut clients: Vec<Option<NotifyClient<tonic::transport::Channel>>> = vec![None, None];
    let mut pick = p;
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed) as usize;
        if n >= messages {
            return;
        }
        let user = &users[n * 7919 % users.len()];
        let req = pb::PublishRequest {
            target: Some(pb::publish_request::Target::UserId(user.clone())),
            event: "chaos".into(),
            data: format!("{{\"n\":{n}}}"),
            idempotency_key: format!("chaos-{n}"),
            ttl_seconds: 0,
            push: None,
        };
        tally.published.fetch_add(1, Ordering::Relaxed);
        loop {
            pick += 1;
            let slot = pick % 2;
            let client = clients[slot].get_or_insert_with(|| {
                let endpoint =
                    tonic::transport::Endpoint::from_shared(format!("http://{}", grpc[slot]))
                        .unwrap()
                        .connect_timeout(Duration::from_secs(1))
                        .timeout(Duration::from_secs(5));
                NotifyClient::new(endpoint.connect_lazy())
            });
            match client.publish(req.clone()).await {
                Ok(answer) => {
                    let seq = answer.into_inner().seq;
                    ledger
                        .expected
                        .lock()
                        .unwrap()
                        .entry(user.clone())
                        .or_default()
                        .insert(seq);
                    tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    tally.failed_calls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Every fight change in the outbox, and every expiry, is one message on
/// `fights:live` (its head seq counts them): none lost to a kill, none
/// doubled by a retry after one.
async fn fights_were_each_emitted_once(db_url: &str, grpc: &str, tracker: &mut Proc) {
    let (sql, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut notify = NotifyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut last = (0, 0, 0);
    let settled = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            tracker.revive();
            let row = sql
                .query_typed(
                    "SELECT (SELECT count(*) FROM fight_outbox), \
                            (SELECT count(*) FROM tracker_expired), \
                            (SELECT count(*) FROM fights WHERE status = 'open' \
                               AND accept_deadline < now() - interval '1 second' \
                               AND id NOT IN (SELECT fight_id FROM tracker_expired))",
                    &[],
                )
                .await
                .unwrap()
                .remove(0);
            let (changes, expired, due): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            let head = lobby_head(&mut notify).await.unwrap_or(0);
            last = (changes, expired, head);
            if due == 0 && head == (changes + expired) as u64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let (changes, expired, head) = last;
    println!("  fight changes     {changes} (+ {expired} expiries)");
    println!("  fights:live       {head} messages");
    assert!(
        settled.is_ok(),
        "fights:live has {head} messages for {changes} changes and {expired} expiries"
    );
    assert!(changes > 0, "the simulation wrote fight changes");
}

/// How many messages `fights:live` has had (its head seq).
async fn lobby_head(
    client: &mut NotifyClient<tonic::transport::Channel>,
) -> Result<u64, tonic::Status> {
    let page = client
        .history(pb::HistoryRequest {
            target: Some(pb::history_request::Target::Topic("fights:live".into())),
            since: 0,
            limit: 1,
            after_acked: false,
        })
        .await?;
    Ok(page.into_inner().head_seq)
}
