//! `notify up`, the README's first command, as a user runs it: the real binary
//! on free loopback ports, a WebSocket client with the printed dev token, a
//! publish over gRPC that reaches it, Ctrl-C.

use std::{process::Stdio, time::Duration};

use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use test_support::{TestDb, eventually, free_port};
use tokio::{io::AsyncBufReadExt, process::Command};

/// `notify up` on free loopback ports; returns it with its addresses once
/// its banner is out.
struct Up {
    child: tokio::process::Child,
    grpc: String,
    http: String,
    ws: String,
    bridge_http: String,
    banner: String,
    data: std::path::PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.data).ok();
    }
}

async fn start_up(db: &TestDb, extra: &[&str]) -> Up {
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let ws = format!("127.0.0.1:{}", free_port());
    let bridge_http = format!("127.0.0.1:{}", free_port());
    let data =
        std::env::temp_dir().join(format!("notify-up-{}-{}", std::process::id(), free_port()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_notify"))
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
        .arg(&data)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn notify up");

    // It tells the user where things are.
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    Up {
        child,
        grpc,
        http,
        ws,
        bridge_http,
        banner,
        data,
    }
}

#[tokio::test]
async fn notify_up_serves_the_api_and_stops_on_ctrl_c() {
    let db = TestDb::create().await;
    let mut up = start_up(&db, &[]).await;
    let (grpc, http, ws, bridge_http) = (
        up.grpc.clone(),
        up.http.clone(),
        up.ws.clone(),
        up.bridge_http.clone(),
    );
    let (banner, child) = (up.banner.clone(), &mut up.child);
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

    let url = format!("http://{grpc}");
    let mut client = eventually("notify up answers gRPC", Duration::from_secs(30), || {
        let url = url.clone();
        async move { NotifyClient::connect(url).await.ok() }
    })
    .await;
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

    // The printed token connects; the message is replayed, the next one live.
    use futures::StreamExt;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/ws?token={token}"))
        .await
        .expect("WebSocket upgrade with the dev token");
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
            frames.push(serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap());
        }
    }
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

    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within 15 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// A bare HTTP/1.0 GET; the whole answer as text.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn notify_up_simulate_puts_fight_events_on_the_lobby() {
    let db = TestDb::create().await;
    let up = start_up(&db, &["--simulate"]).await;
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
    drop(up);
}
