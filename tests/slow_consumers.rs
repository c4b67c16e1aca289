//! What stalled clients cost a real bridge (the binary, as deployed, with
//! default settings): 100 clients that read nothing and one that reads,
//! all on one topic, under a burst of 200 messages of 50 KB. Every stalled
//! client is closed with 4008, the reader gets every message in order, and
//! the bridge's resident memory grows by no more than docs/limits.md says a
//! stalled connection may hold, times 100.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use serde_json::Value;
use test_support::{
    TestDb, TestDir, eventually, free_port, process::ServiceProcess, prometheus::value_at,
    wait_ready,
};
use tokio_tungstenite::tungstenite::Message;

const STALLED: usize = 100;
const MESSAGES: u64 = 200;
const BYTES: usize = 50_000;
/// What docs/limits.md allows one stalled connection to hold: its send queue
/// (`BRIDGE_SEND_QUEUE_BYTES`, 1 MiB) plus its socket's write buffer (16 KiB
/// and the frame being written, at most 64 KiB).
const PER_CONNECTION: u64 = 1024 * 1024 + 16 * 1024 + 64 * 1024;

/// The process's resident set, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_closed_and_hold_no_more_than_the_byte_bound() {
    let db = TestDb::create().await;
    let data = TestDir::create("slow-consumers");
    let exe = env!("CARGO_BIN_EXE_notify");
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut svc = ServiceProcess::notify_svc(exe, &grpc, &db.url);
    svc.start();
    let ws = format!("127.0.0.1:{}", free_port());
    let ops = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{grpc}");
    let mut bridge = ServiceProcess::dev_bridge(exe, "bridge", &ws, &ops, &url, &data.path);
    bridge.start();
    wait_ready(&ops).await;
    let issuer = notify_auth::DevIssuer::load_or_create(
        &data.join(notify_auth::DEV_KEY_FILE),
        notify_auth::DEV_ISSUER,
        notify_auth::DEV_CLIENT_ID,
    )
    .unwrap();
    let connect = |user: String, stalling: bool| {
        let token = issuer.mint(&notify_auth::DevToken::access(&user)).unwrap();
        let url = format!("ws://{ws}/ws?token={token}");
        let addr: std::net::SocketAddr = ws.parse().unwrap();
        async move {
            let stream = if stalling {
                test_support::stalling_stream(addr).await
            } else {
                tokio::net::TcpStream::connect(addr).await.unwrap()
            };
            let (mut socket, _) = tokio_tungstenite::client_async(
                url,
                tokio_tungstenite::MaybeTlsStream::Plain(stream),
            )
            .await
            .unwrap();
            let subscribe = r#"{"action":"subscribe","topic":"room:burst"}"#;
            socket.send(Message::text(subscribe)).await.unwrap();
            let mut subscribed = false;
            while !subscribed {
                let frame = socket.next().await.unwrap().unwrap();
                if let Message::Text(t) = frame {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    subscribed = v["type"] == "subscribed";
                }
            }
            socket
        }
    };
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        stalled.push(connect(format!("stalled-{i}"), true).await);
    }
    let mut reader = connect("reader".into(), false).await;
    let pid = bridge.pid().unwrap();
    let before = rss(pid);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        let mut got = 0;
        while got < MESSAGES {
            let frame = reader.next().await.unwrap().unwrap();
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "message" {
                    got += 1;
                    let _ = tx.send(v["seq"].as_u64().unwrap());
                }
            }
        }
        reader
    });
    let sampling = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(rss(pid));
            if value_at(&ops, "bridge_slow_consumers_total").await >= STALLED as f64 {
                return (peak.max(rss(pid)), ops);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut api = NotifyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let data = format!("\"{}\"", "b".repeat(BYTES));
    // In rounds of 10 the reader takes in before the next: the reader stands
    // for a client that keeps within the bound, which this test's own reader
    // on a loaded machine might not do under an unpaced 10 MB burst.
    let mut seqs = Vec::new();
    for round in 1..=MESSAGES / 10 {
        for _ in 0..10 {
            let req = pb::PublishRequest {
                target: Some(pb::publish_request::Target::Topic("room:burst".into())),
                event: "burst".into(),
                data: data.clone(),
                ..Default::default()
            };
            api.publish(req).await.unwrap();
        }
        while (seqs.len() as u64) < round * 10 {
            let seq = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("the reader is never held back")
                .expect("the reader's socket stays open");
            seqs.push(seq);
        }
    }
    let reader = reading.await.unwrap();
    assert_eq!(
        seqs,
        (1..=MESSAGES).collect::<Vec<_>>(),
        "every message, in order"
    );
    let (peak, ops) = tokio::time::timeout(Duration::from_secs(60), sampling)
        .await
        .expect("every stalled client is closed with 4008")
        .unwrap();
    let grown = peak.saturating_sub(before);
    eprintln!(
        "bridge RSS {} MiB before, {} MiB at peak: +{} MiB for {STALLED} stalled clients \
         (bound {} MiB)",
        before >> 20,
        peak >> 20,
        grown >> 20,
        (PER_CONNECTION * STALLED as u64) >> 20
    );
    assert!(
        grown <= PER_CONNECTION * STALLED as u64,
        "the bridge grew by {grown} bytes"
    );
    // Only the reader is left.
    eventually(
        "the stalled sockets are gone",
        Duration::from_secs(20),
        || {
            let ops = ops.clone();
            async move { (value_at(&ops, "bridge_connections").await == 1.0).then_some(()) }
        },
    )
    .await;
    drop((stalled, reader));
}
