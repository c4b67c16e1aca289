//! `notify up`, the README's first command, as a user runs it: the real binary
//! on free loopback ports — on its embedded SQLite by default, on Postgres
//! when DATABASE_URL says so — a WebSocket client with a dev token, a
//! publish that reaches it, Ctrl-C, a restart on the same data directory.

use std::{path::Path, process::Stdio, time::Duration};

use futures::SinkExt;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use serde_json::Value;
use test_support::{TestDb, TestDir, eventually, free_port};
use tokio::{io::AsyncBufReadExt, process::Command};
use tokio_tungstenite::tungstenite::Message;

/// `notify up` on free loopback ports, started once its banner is out.
struct Up {
    child: tokio::process::Child,
    grpc: String,
    http: String,
    ws: String,
    bridge_http: String,
    banner: String,
}

impl Up {
    /// Starts `notify up` with `data` as its data directory, on `database_url`
    /// (None: its default, SQLite in the data directory).
    async fn start(data: &Path, database_url: Option<&str>, extra: &[&str]) -> Self {
        let mut up = Self::spawn(data, database_url, extra);
        // It tells the user where things are.
        let mut lines = tokio::io::BufReader::new(up.child.stdout.take().unwrap()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            up.banner.push_str(&line);
            up.banner.push('\n');
            if line.contains("Ctrl-C") {
                break;
            }
        }
        up
    }

    /// Starts it without waiting for anything.
    fn spawn(data: &Path, database_url: Option<&str>, extra: &[&str]) -> Self {
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let ws = format!("127.0.0.1:{}", free_port());
        let bridge_http = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_notify"));
        command
            .args([
                "up",
                "--grpc-addr",
                &grpc,
                "--http-addr",
                &http,
                "--ws-addr",
                &ws,
                "--bridge-http-addr",
                &bridge_http,
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        match database_url {
            Some(url) => command.env("DATABASE_URL", url),
            None => command.env_remove("DATABASE_URL"),
        };
        Self {
            child: command.spawn().expect("spawn notify up"),
            grpc,
            http,
            ws,
            bridge_http,
            banner: String::new(),
        }
    }

    /// A gRPC client, once notify-svc answers.
    async fn client(&self) -> NotifyClient<tonic::transport::Channel> {
        let url = format!("http://{}", self.grpc);
        eventually("notify up answers gRPC", Duration::from_secs(30), || {
            let url = url.clone();
            async move { NotifyClient::connect(url).await.ok() }
        })
        .await
    }

    /// A WebSocket with `token`, once the bridge takes them (it answers 503
    /// until its link to notify-svc is up).
    async fn socket(
        &self,
        token: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let url = format!("ws://{}/ws?token={}", self.ws, token.trim());
        eventually("the bridge takes sockets", Duration::from_secs(30), || {
            let url = url.clone();
            async move { Some(tokio_tungstenite::connect_async(url).await.ok()?.0) }
        })
        .await
    }

    /// Ctrl-C, as a user stops it: it must exit cleanly.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("stops within 15 s")
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

/// Runs the `notify` CLI; its stdout, which must be a success.
async fn notify(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_notify"))
            .args(&args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "notify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `notify token --user USER --data-dir DATA`: a dev token of that directory's key.
async fn dev_token(data: &Path, user: &str) -> String {
    let args = [
        "token",
        "--user",
        user,
        "--data-dir",
        &data.display().to_string(),
    ];
    notify(args.map(String::from).to_vec()).await
}

/// The next `n` text frames (JSON) of a socket, 10 s each at most.
async fn frames<S>(socket: &mut S, n: usize) -> Vec<Value>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut got = Vec::new();
    while got.len() < n {
        got.push(notify_harness::next_json(socket).await);
    }
    got
}

#[tokio::test]
async fn notify_up_on_postgres_serves_the_api_and_stops_on_ctrl_c() {
    let db = TestDb::create().await;
    let data = TestDir::create("up-postgres");
    let up = Up::start(&data.path, Some(&db.url), &[]).await;
    let (grpc, http, ws, bridge_http) = (
        up.grpc.clone(),
        up.http.clone(),
        up.ws.clone(),
        up.bridge_http.clone(),
    );
    let banner = up.banner.clone();
    assert!(banner.contains("database     postgres://"), "{banner}");
    assert!(banner.contains(&format!("grpc://{grpc}")), "{banner}");
    assert!(
        banner.contains(&format!("http://{http}/healthz")),
        "{banner}"
    );
    assert!(banner.contains(&format!("ws://{ws}/ws")), "{banner}");
    assert!(banner.contains("notify publish --url"), "{banner}");
    let token = banner
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN="))
        .expect("a dev token line")
        .to_owned();

    let mut client = up.client().await;
    let sent = eventually("first publish", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            client
                .publish(pb::PublishRequest {
                    target: Some(pb::publish_request::Target::UserId("alice".into())),
                    event: "hello".into(),
                    data: r#"{"from":"readme"}"#.into(),
                    ..Default::default()
                })
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    assert_eq!(sent.seq, 1);

    // The printed token connects; the message is replayed.
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/ws?token={token}"))
        .await
        .expect("WebSocket upgrade with the dev token");
    let frames = frames(&mut socket, 2).await;
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(
        (
            frames[1]["seq"].as_u64(),
            frames[1]["data"]["from"].as_str()
        ),
        (Some(1), Some("readme"))
    );
    let page = client
        .history(pb::HistoryRequest {
            target: Some(pb::history_request::Target::UserId("alice".into())),
            since: 0,
            limit: 10,
            after_acked: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages[0].message_id, sent.message_id);

    // The bridge's ops port counts the connection.
    let metrics = http_get(&bridge_http, "/metrics").await;
    assert!(metrics.contains("bridge_connects_total 1"), "{metrics}");
    let ready = http_get(&bridge_http, "/readyz").await;
    assert!(
        ready.lines().next().unwrap_or_default().contains(" 200 "),
        "{ready}"
    );

    up.stop().await;
}

/// A bare HTTP/1.0 GET; the whole answer as text.
async fn http_get(addr: &str, path: &str) -> String {
    test_support::http_get(addr, path)
        .await
        .unwrap_or_else(|| panic!("no HTTP answer from {addr}"))
}

#[tokio::test]
async fn notify_up_simulate_puts_fight_events_on_the_lobby() {
    // On the default store: the fights trigger and outbox live in SQLite too.
    let data = TestDir::create("up-simulate");
    let up = Up::start(&data.path, None, &["--simulate"]).await;
    assert!(
        up.banner.contains("simulated fights are running"),
        "{}",
        up.banner
    );
    let url = format!("http://{}", up.grpc);
    let events = eventually(
        "fight events on fights:live",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let mut client = NotifyClient::connect(url).await.ok()?;
                let page = client
                    .history(pb::HistoryRequest {
                        target: Some(pb::history_request::Target::Topic("fights:live".into())),
                        since: 0,
                        limit: 100,
                        after_acked: false,
                    })
                    .await
                    .ok()?
                    .into_inner();
                (page.messages.len() >= 3).then_some(page.messages)
            }
        },
    )
    .await;
    assert_eq!(events[0].event, "fight_created");
    assert!(events.iter().all(|m| m.event.starts_with("fight_")));
    let fight: Value = serde_json::from_str(&events[0].data).unwrap();
    assert!(fight["fight"]["stake"].as_i64().unwrap_or(0) > 0, "{fight}");

    // What the README's quick start shows: `notify connect` follows the lobby.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(["connect", "--user", "carol", "--topic", "fights:live"])
        .args(["--ws", &format!("ws://{}/ws", up.ws)])
        .arg("--data-dir")
        .arg(&data.path)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|f: &Value| f["topic"] == "fights:live") {
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("a frame within 15 s")
            .unwrap()
            .expect("notify connect still running");
        seen.push(serde_json::from_str(&line).unwrap());
    }
    assert_eq!(seen[0]["type"], "welcome", "{seen:?}");
    assert!(seen.iter().any(|f| f["type"] == "subscribed"), "{seen:?}");
    let pid = watcher.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), watcher.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "Ctrl-C closes normally: {status:?}");
    up.stop().await;
}

#[tokio::test]
async fn notify_up_keeps_messages_across_a_restart_on_its_sqlite_data_dir() {
    let data = TestDir::create("up-sqlite");
    let dir = data.path.display().to_string();
    let up = Up::start(&data.path, None, &[]).await;
    assert!(
        up.banner
            .contains(&format!("database     sqlite:{dir}/notify.db")),
        "{}",
        up.banner
    );
    up.client().await;
    let grpc = format!("http://{}", up.grpc);
    let publish = |text: &str| {
        let data = format!("{{\"text\":\"{text}\"}}");
        notify(
            ["publish", "--url", &grpc, "--user", "bob", "--data", &data]
                .map(String::from)
                .to_vec(),
        )
    };

    // A token from `notify token` (same data dir, so the same dev key).
    let token = dev_token(&data.path, "bob").await;
    let mut socket = up.socket(&token).await;
    assert_eq!(frames(&mut socket, 1).await[0]["type"], "welcome");
    // `notify connect` with a bad token: refused before the upgrade, exit 1.
    let ws_url = format!("ws://{}/ws", up.ws);
    let refused = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_notify"))
            .args(["connect", "--ws", &ws_url, "--token", "not-a-jwt"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("401") && why.contains("token"), "{why}");
    let sent: Value = serde_json::from_str(&publish("live").await).unwrap();
    let live = frames(&mut socket, 1).await;
    assert_eq!(
        (live[0]["seq"].as_u64(), live[0]["data"]["text"].as_str()),
        (Some(1), Some("live"))
    );
    assert_eq!(live[0]["id"], sent["message_id"]);
    socket
        .send(Message::text(r#"{"action":"ack","seq":1}"#))
        .await
        .unwrap();
    socket.close(None).await.unwrap();
    // Offline now: this one waits in bob's inbox.
    publish("while you were away").await;
    up.stop().await;

    // A VAPID key pair was made for Web Push, readable by its owner only.
    let vapid = data.path.join("vapid.pem");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&vapid).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pem = std::fs::read_to_string(&vapid).unwrap();

    // Same data dir: the message, the ack and the dev key are all still there.
    let up = Up::start(&data.path, None, &[]).await;
    let mut api = up.client().await;
    let devices = api
        .list_devices(notify_proto::v1::ListDevicesRequest {
            user_id: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(devices.vapid_public_key.len(), 87, "Web Push is on");
    assert_eq!(
        std::fs::read_to_string(&vapid).unwrap(),
        pem,
        "the same key across restarts: browsers' subscriptions stay valid"
    );
    let mut socket = up.socket(&token).await;
    let got = frames(&mut socket, 2).await;
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(
        (got[1]["seq"].as_u64(), got[1]["data"]["text"].as_str()),
        (Some(2), Some("while you were away")),
        "replayed after the acked seq 1"
    );
    drop(socket);
    up.stop().await;

    // Nothing left to migrate in that file.
    let migrated: Value = serde_json::from_str(
        &notify(
            [
                "migrate",
                "--database-url",
                &format!("sqlite:{dir}/notify.db"),
            ]
            .map(String::from)
            .to_vec(),
        )
        .await,
    )
    .unwrap();
    assert_eq!(migrated["applied"], 0);
}

#[tokio::test]
async fn a_token_minted_the_moment_the_port_opens_connects_on_every_fresh_start() {
    for start in 0..20 {
        let data = TestDir::create(&format!("up-race-{start}"));
        let up = Up::spawn(&data.path, None, &[]);
        // The first moment the WebSocket port takes a connection...
        eventually(
            "the WebSocket port accepts",
            Duration::from_secs(60),
            || async { tokio::net::TcpStream::connect(&up.ws).await.ok() },
        )
        .await;
        // ...a token from the same (possibly still empty) data directory...
        let token = dev_token(&data.path, "alice").await;
        // ...connects at once: no 401, no 503, no socket closed unanswered.
        let url = format!("ws://{}/ws?token={}", up.ws, token.trim());
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("start {start}: the first connect failed: {e}"));
        let welcome = &frames(&mut socket, 1).await[0];
        assert_eq!(welcome["type"], "welcome", "start {start}");
        drop(socket);
        up.stop().await;
    }
}

#[tokio::test]
async fn a_server_side_subscription_reaches_live_and_later_sockets_on_sqlite() {
    let data = TestDir::create("up-subscribe");
    let up = Up::start(&data.path, None, &[]).await;
    up.client().await;
    let grpc = format!("http://{}", up.grpc);
    let cli = |args: &[&str]| {
        let mut all = vec!["--url".to_owned(), grpc.clone()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        async move { serde_json::from_str::<Value>(&notify(all).await).unwrap() }
    };
    let token = dev_token(&data.path, "cat").await;
    let mut live = up.socket(&token).await;
    assert_eq!(frames(&mut live, 1).await[0]["type"], "welcome");

    let made = cli(&["subscribe", "--user", "cat", "--topic", "room:sq"]).await;
    assert_eq!(
        (made["created"].as_bool(), made["live_connections"].as_u64()),
        (Some(true), Some(1))
    );
    let told = &frames(&mut live, 1).await[0];
    assert_eq!(
        (told["type"].as_str(), told["source"].as_str()),
        (Some("subscribed"), Some("server"))
    );
    let sent = cli(&["publish", "--topic", "room:sq", "--data", "\"hi\""]).await;
    assert_eq!(sent["delivered"].as_u64(), Some(1));
    assert_eq!(frames(&mut live, 1).await[0]["data"], "hi");

    // A fresh socket follows it from its welcome on.
    let mut fresh = up.socket(&token).await;
    let got = frames(&mut fresh, 2).await;
    assert_eq!(
        (got[0]["type"].as_str(), got[1]["source"].as_str()),
        (Some("welcome"), Some("server"))
    );
    let sent = cli(&["publish", "--topic", "room:sq", "--data", "\"both\""]).await;
    assert_eq!(sent["delivered"].as_u64(), Some(2));
    for socket in [&mut live, &mut fresh] {
        assert_eq!(frames(socket, 1).await[0]["data"], "both");
    }
    let presence = cli(&["presence", "--topic", "room:sq"]).await;
    assert_eq!(
        (
            presence["subscribers"].as_u64(),
            presence["live_connections"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let gone = cli(&["unsubscribe", "--user", "cat", "--topic", "room:sq"]).await;
    assert_eq!(gone["live_connections"].as_u64(), Some(2));
    for socket in [&mut live, &mut fresh] {
        assert_eq!(frames(socket, 1).await[0]["type"], "unsubscribed");
    }
    drop((live, fresh));
    up.stop().await;
}

/// The README's outbox example on `notify up`'s own database: a row
/// committed in a transaction beside a business change reaches the user's
/// live socket; a rolled-back one never does.
#[tokio::test]
async fn a_row_committed_to_notify_outbox_reaches_the_live_socket_on_sqlite() {
    let data = TestDir::create("up-outbox");
    let up = Up::start(&data.path, None, &[]).await;
    up.client().await;
    let token = dev_token(&data.path, "dora").await;
    let mut socket = up.socket(&token).await;
    assert_eq!(frames(&mut socket, 1).await[0]["type"], "welcome");
    let file = data.path.join("notify.db");
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(file).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch(
            r#"CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT);
               BEGIN;
               INSERT INTO orders (id, status) VALUES (1, 'void');
               INSERT INTO notify_outbox (publish) VALUES
                 ('{"user_id":"dora","event":"order.paid","data":{"order":0}}');
               ROLLBACK;
               BEGIN;
               INSERT INTO orders (id, status) VALUES (42, 'paid');
               INSERT INTO notify_outbox (publish) VALUES
                 ('{"user_id":"dora","event":"order.paid","data":{"order":42}}');
               COMMIT;"#,
        )
        .unwrap();
    })
    .await
    .unwrap();
    let got = frames(&mut socket, 1).await;
    assert_eq!(
        (got[0]["event"].as_str(), &got[0]["data"]["order"]),
        (Some("order.paid"), &Value::from(42)),
        "{got:?}"
    );
    drop(socket);
    up.stop().await;
}

#[tokio::test]
async fn notify_up_refuses_to_serve_its_unauthenticated_api_beyond_loopback() {
    let data = TestDir::create("up-wide");
    let out = Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(["up", "--grpc-addr", "0.0.0.0:0", "--data-dir"])
        .arg(&data.path)
        .env_remove("NOTIFY_API_TOKENS")
        .env_remove("DATABASE_URL")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("it refuses at once")
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("loopback only"), "{said}");
}

/// A backend answering every routed action with the caller's user id.
struct WhoAmI;

#[tonic::async_trait]
impl notify_proto::v1::upstream_server::Upstream for WhoAmI {
    async fn handle(
        &self,
        req: tonic::Request<notify_proto::v1::HandleRequest>,
    ) -> Result<tonic::Response<notify_proto::v1::HandleResponse>, tonic::Status> {
        let caller = req.into_inner().caller.unwrap_or_default();
        let reply = serde_json::json!({ "you": caller.user_id }).to_string();
        Ok(tonic::Response::new(notify_proto::v1::HandleResponse {
            reply,
        }))
    }

    async fn on_connect(
        &self,
        _: tonic::Request<notify_proto::v1::ConnectRequest>,
    ) -> Result<tonic::Response<notify_proto::v1::ConnectResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test]
async fn notify_up_routes_actions_to_a_backend_as_the_bridge_binary_does() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(notify_proto::v1::upstream_server::UpstreamServer::new(
                WhoAmI,
            ))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let data = TestDir::create("up-routes");
    let routes = format!("whoami=http://{backend}");
    let up = Up::start(&data.path, None, &["--routes", &routes]).await;
    let token = dev_token(&data.path, "ivy").await;
    let mut socket = up.socket(&token).await;
    assert_eq!(frames(&mut socket, 1).await[0]["type"], "welcome");
    socket
        .send(Message::text(r#"{"action":"whoami","id":"w"}"#))
        .await
        .unwrap();
    let reply = &frames(&mut socket, 1).await[0];
    assert_eq!(
        (
            reply["type"].as_str(),
            reply["id"].as_str(),
            reply["data"]["you"].as_str()
        ),
        (Some("reply"), Some("w"), Some("ivy")),
        "{reply}"
    );
    // Backends hear the socket's life from notify up's SQLite log as well.
    let mut client = up.client().await;
    let mut events = client
        .watch_connections(notify_proto::v1::WatchConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    socket.close(None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("lifecycle events within 10 s")
            .unwrap()
            .expect("stream open");
        seen.extend(
            batch
                .events
                .into_iter()
                .map(|e| (e.position, e.kind, e.user_id, e.close_code)),
        );
    }
    use notify_proto::v1::connection_event::Kind;
    assert_eq!(
        seen,
        [
            (1, Kind::Connected as i32, "ivy".to_owned(), 0),
            (2, Kind::Disconnected as i32, "ivy".to_owned(), 1005),
        ]
    );
}
