//! Connection lifecycle events as a backend sees them, with the real
//! binaries: two notify-svc replicas on one database, two bridges linked to
//! both, a backend watching `WatchConnections` on one replica. Connects,
//! subscribes and closes arrive once each and in order; the backend
//! restarts and resumes from its last position without losing what happened
//! meanwhile; a bridge killed with SIGKILL still has its connections
//! reported closed (`bridge_lost`, 1006) once no replica hears it for
//! NOTIFY_BRIDGE_EXPIRY_SECS; a bridge stopped cleanly reports 1012.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use notify_proto::v1::{self as pb, connection_event::Kind, notify_client::NotifyClient};
use serde_json::{Value, json};
use test_support::{TestDb, TestDir, free_addrs, process::ServiceProcess, wait_ready};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

/// The expiry the replicas run with (seconds).
const EXPIRY_SECS: u64 = 2;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One event as the test compares it: (kind, user, topic, code, reason).
type Seen = (Kind, String, String, u32, String);

struct Backend {
    stream: tonic::Streaming<pb::ConnectionEvents>,
    /// The last position handled.
    position: u64,
}

impl Backend {
    async fn watch(grpc: &str, after: u64) -> Self {
        let mut api = NotifyClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let req = pb::WatchConnectionsRequest {
            after,
            from_now: false,
        };
        let stream = api.watch_connections(req).await.unwrap().into_inner();
        Self {
            stream,
            position: after,
        }
    }

    /// The next `n` events (failing after `within`); positions must follow
    /// on from the last one handled, with no gap.
    async fn next(&mut self, n: usize, within: Duration) -> Vec<(String, Seen)> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while got.len() < n {
            let batch = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("{n} events within {within:?}; got {got:?}"))
                .expect("stream open")
                .expect("no error");
            assert!(!batch.missed, "nothing is old enough to be swept");
            for e in batch.events {
                assert_eq!(e.position, self.position + 1, "gap-free: {e:?}");
                self.position = e.position;
                let kind = Kind::try_from(e.kind).unwrap();
                got.push((
                    e.connection_id,
                    (kind, e.user_id, e.topic, e.close_code, e.reason),
                ));
            }
        }
        got
    }
}

fn seen(kind: Kind, user: &str, topic: &str, code: u32, reason: &str) -> Seen {
    (kind, user.into(), topic.into(), code, reason.into())
}

async fn connect(ws: &str, token: &str) -> (Socket, String) {
    let url = format!("ws://{ws}/ws?token={token}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = next_frame(&mut socket).await;
    assert_eq!(welcome["type"], "welcome");
    let id = welcome["connection_id"].as_str().unwrap().to_owned();
    (socket, id)
}

async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("no error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

async fn send(socket: &mut Socket, frame: Value) -> Value {
    socket.send(Message::text(frame.to_string())).await.unwrap();
    next_frame(socket).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_hears_every_connection_event_once_across_its_restart_and_a_killed_bridge() {
    let db = TestDb::create().await;
    let data = TestDir::create("lifecycle");
    let exe = env!("CARGO_BIN_EXE_notify");
    let grpc = free_addrs(2);
    let mut replicas: Vec<ServiceProcess> = grpc
        .iter()
        .map(|addr| {
            ServiceProcess::notify_svc(exe, addr, &db.url)
                .env("NOTIFY_BRIDGE_EXPIRY_SECS", EXPIRY_SECS.to_string())
        })
        .collect();
    for r in &mut replicas {
        r.start();
    }
    let urls = grpc
        .iter()
        .map(|g| format!("http://{g}"))
        .collect::<Vec<_>>()
        .join(",");
    let (ws, ops) = (free_addrs(2), free_addrs(2));
    let mut bridges: Vec<ServiceProcess> = (0..2)
        .map(|i| {
            let name = format!("bridge-{i}");
            ServiceProcess::dev_bridge(exe, &name, &ws[i], &ops[i], &urls, &data.path)
                .env("BRIDGE_ID", format!("lifecycle-{i}"))
        })
        .collect();
    for bridge in &mut bridges {
        bridge.start();
    }
    for g in &grpc {
        wait_grpc(g).await;
    }
    for o in &ops {
        wait_ready(o).await;
    }
    let issuer = notify_auth::DevIssuer::load_or_create(
        &data.join(notify_auth::DEV_KEY_FILE),
        notify_auth::DEV_ISSUER,
        notify_auth::DEV_CLIENT_ID,
    )
    .unwrap();
    let token = |user: &str| issuer.mint(&notify_auth::DevToken::access(user)).unwrap();

    // The backend watches replica 1 from the start of the log.
    let mut backend = Backend::watch(&grpc[1], 0).await;

    // ann on bridge 0 follows a topic and leaves it, then closes; bob stays
    // on bridge 1.
    let (mut ann, ann_id) = connect(&ws[0], &token("ann")).await;
    let subscribed = send(
        &mut ann,
        json!({"action": "subscribe", "topic": "room:lobby"}),
    )
    .await;
    assert_eq!(subscribed["type"], "subscribed");
    let left = send(
        &mut ann,
        json!({"action": "unsubscribe", "topic": "room:lobby"}),
    )
    .await;
    assert_eq!(left["type"], "unsubscribed");
    let (_bob, bob_id) = connect(&ws[1], &token("bob")).await;
    ann.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    let got = backend.next(5, Duration::from_secs(15)).await;
    let mine = |id: &str| -> Vec<Seen> {
        got.iter()
            .filter(|(c, _)| c == id)
            .map(|(_, s)| s.clone())
            .collect()
    };
    assert_eq!(
        mine(&ann_id),
        [
            seen(Kind::Connected, "ann", "", 0, ""),
            seen(Kind::Subscribed, "ann", "room:lobby", 0, ""),
            seen(Kind::Unsubscribed, "ann", "room:lobby", 0, ""),
            seen(Kind::Disconnected, "ann", "", 1000, "done"),
        ],
        "ann's events in order, each once"
    );
    assert_eq!(mine(&bob_id), [seen(Kind::Connected, "bob", "", 0, "")]);
    let handled = backend.position;

    // The backend restarts. While it is away, cy connects and bridge 1
    // (bob's) is killed: it never reports bob closed.
    drop(backend);
    let (_cy, cy_id) = connect(&ws[0], &token("cy")).await;
    let killed = Instant::now();
    bridges[1].kill9().await;

    // Resumed from its last position, it hears both, and nothing twice;
    // bob's end comes once no replica has heard bridge 1 for the expiry.
    let mut backend = Backend::watch(&grpc[1], handled).await;
    let mut got = backend.next(2, Duration::from_secs(30)).await;
    let took = killed.elapsed();
    got.sort_by_key(|(_, s)| s.0 as i32);
    assert_eq!(
        got,
        [
            (cy_id.clone(), seen(Kind::Connected, "cy", "", 0, "")),
            (
                bob_id,
                seen(Kind::Disconnected, "bob", "", 1006, "bridge_lost")
            ),
        ]
    );
    // The documented bound: 4/3 of the expiry after the last replica lost
    // the link, plus a slow machine's margin.
    assert!(
        took < Duration::from_secs(EXPIRY_SECS * 4 / 3 + 5),
        "bob's end reported {took:?} after the kill"
    );

    // A bridge stopped cleanly closes its sockets with 1012 and says so.
    let status = bridges[0].terminate().await.expect("bridge 0 ran");
    assert!(status.success());
    let got = backend.next(1, Duration::from_secs(15)).await;
    assert_eq!(
        got,
        [(
            cy_id,
            seen(Kind::Disconnected, "cy", "", 1012, "server restarting")
        )]
    );

    // `notify connections` prints the same log, one JSON per event.
    let out = tokio::process::Command::new(exe)
        .args([
            "connections",
            "--after",
            "0",
            "--url",
            &format!("http://{}", grpc[0]),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let printed = read_lines(out, 8).await;
    let kinds: Vec<(u64, &str, &str)> = printed
        .iter()
        .map(|v| {
            (
                v["position"].as_u64().unwrap(),
                v["kind"].as_str().unwrap(),
                v["user_id"].as_str().unwrap(),
            )
        })
        .collect();
    let positions: Vec<u64> = kinds.iter().map(|k| k.0).collect();
    assert_eq!(positions, (1..=8).collect::<Vec<_>>());
    assert_eq!(kinds[7], (8, "disconnected", "cy"));
    assert_eq!(printed[7]["close_code"], 1012);
    for r in &mut replicas {
        r.terminate().await;
    }
}

/// The first `n` JSON lines a child prints.
async fn read_lines(mut child: tokio::process::Child, n: usize) -> Vec<Value> {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().unwrap();
    let mut reader = tokio::io::BufReader::new(stdout).lines();
    let mut got = Vec::new();
    while got.len() < n {
        let line = tokio::time::timeout(Duration::from_secs(20), reader.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .expect("still running");
        got.push(serde_json::from_str(&line).unwrap());
    }
    got
}

/// Waits until the gRPC port answers.
async fn wait_grpc(addr: &str) {
    test_support::eventually("notify-svc answers", Duration::from_secs(30), || async {
        NotifyClient::connect(format!("http://{addr}"))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}
