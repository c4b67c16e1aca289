//! Promises a client relies on, each written as the client would check it:
//! replay of large backlogs, resume points past the head, byte-bounded slow
//! consumers, stuck writes, honest resume and server-side subscriptions.

mod common;

use std::time::Duration;

use common::*;
use notify_bridge::SendBound;
use notify_proto::v1 as pb;

#[tokio::test]
async fn a_backlog_of_large_messages_replays_in_full() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    // 80 × 60 KB = 4.8 MB: over gRPC's default 4 MiB receive limit as one page.
    let data = format!("\"{}\"", "y".repeat(60 * 1000));
    for _ in 0..80 {
        api.publish(to_user("lia", &data)).await.unwrap();
    }
    let mut lia = p.connect("lia", "").await;
    let welcome = lia.next().await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["seq"].as_u64()),
        (Some("welcome"), Some(80))
    );
    for seq in 1..=80u64 {
        let m = lia.next().await;
        assert_eq!(m["seq"].as_u64(), Some(seq), "replayed in order");
        assert_eq!(m["data"].as_str().map(str::len), Some(60 * 1000));
    }
}

#[tokio::test]
async fn a_resume_point_past_the_head_is_clamped() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    for i in 1..=3 {
        api.publish(to_user("max", &i.to_string())).await.unwrap();
    }
    let mut max = p.connect("max", "?since=1000").await;
    assert_eq!(max.next().await["seq"].as_u64(), Some(3));
    // Live messages still arrive...
    let sent = api.publish(to_user("max", "4")).await.unwrap().into_inner();
    assert_eq!(sent.delivered, 1);
    assert_eq!(max.next().await["seq"].as_u64(), Some(4));
    // ...and an ack past what was delivered marks only that as delivered.
    max.send(serde_json::json!({"action": "ack", "seq": 1000}))
        .await;
    drop(max);
    api.publish(to_user("max", "5")).await.unwrap();
    let acked = test_support::eventually("the ack is stored", Duration::from_secs(10), || {
        let mut api = api.clone();
        async move {
            let page = api
                .history(pb::HistoryRequest {
                    target: Some(pb::history_request::Target::UserId("max".into())),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (page.acked_seq > 0).then_some(page.acked_seq)
        }
    })
    .await;
    assert_eq!(acked, 4, "acks never pass what the connection was sent");
    let mut again = p.connect("max", "").await;
    again.next().await;
    assert_eq!(again.next().await["seq"].as_u64(), Some(5));
}

/// Reads and counts `message` frames until `n` arrived; their seqs.
async fn read_messages(mut c: Client, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let m = c.next().await;
        if m["type"] == "message" {
            seqs.push(m["seq"].as_u64().unwrap());
        }
    }
    seqs
}

#[tokio::test]
async fn a_burst_of_large_messages_closes_a_stalled_client_at_the_default_byte_bound() {
    // Default settings: 1,024 frames, 1 MiB.
    let p = Platform::start().await;
    let mut api = p.api().await;
    let mut stalled = p.connect("sam", "").await;
    let mut reader = p.connect("tia", "").await;
    for c in [&mut stalled, &mut reader] {
        assert_eq!(c.next().await["type"], "welcome");
        c.send(serde_json::json!({"action": "subscribe", "topic": "room:big"}))
            .await;
        assert_eq!(c.next().await["type"], "subscribed");
    }
    // 200 × 50 KB = 10 MB: far fewer frames than the frame bound.
    let data = format!("\"{}\"", "z".repeat(50 * 1000));
    let reading = tokio::spawn(read_messages(reader, 200));
    for _ in 0..200 {
        api.publish(to_topic("room:big", &data)).await.unwrap();
    }
    let seqs = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the reader is not held back")
        .unwrap();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<_>>(),
        "every message, in order"
    );
    assert_eq!(closing_code(&mut stalled).await, Some(4008));
}

/// A bridge whose queues never overflow (so no 4008), with this ping period.
fn patient_bridge(p: &Platform, id: &str, ping_every: Duration) -> notify_bridge::BridgeConfig {
    let mut config = p.bridge_config(
        id,
        SendBound {
            frames: 1_000_000,
            bytes: 1 << 30,
        },
    );
    config.ping_every = ping_every;
    config
}

/// Publishes ~9 MB to `user`'s inbox: more than the socket buffers take,
/// so a client that reads nothing leaves the bridge's write waiting.
async fn flood(p: &Platform, user: &str) {
    let mut api = p.api().await;
    let data = format!("\"{}\"", "w".repeat(60 * 1000));
    for _ in 0..150 {
        api.publish(to_user(user, &data)).await.unwrap();
    }
}

async fn connected(p: &Platform, user: &str) -> usize {
    let mut api = p.api().await;
    api.get_presence(presence_req(user))
        .await
        .map_or(usize::MAX, |r| r.into_inner().connections.len())
}

async fn until_gone(p: &Platform, user: &str, why: &str) {
    test_support::eventually(why, Duration::from_secs(20), || async {
        (connected(p, user).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stuck_write_does_not_stop_the_ping_timeout() {
    let p = Platform::start().await;
    let ws = p
        .run_bridge(patient_bridge(
            &p,
            "bridge-ping",
            Duration::from_millis(500),
        ))
        .await;
    let mut stalled = p.connect_when_ready(&ws, "uma").await;
    assert_eq!(stalled.next().await["type"], "welcome");
    flood(&p, "uma").await;
    // It reads nothing and answers no ping: closed after two periods.
    until_gone(&p, "uma", "the stalled client is closed for missed pongs").await;
}

#[tokio::test]
async fn a_stuck_write_does_not_stop_the_token_expiry() {
    let p = Platform::start().await;
    let ws = p
        .run_bridge(patient_bridge(&p, "bridge-exp", Duration::from_secs(3600)))
        .await;
    let token = p
        .issuer
        .mint(&notify_auth::DevToken {
            ttl: Duration::from_secs(5),
            ..notify_auth::DevToken::access("val")
        })
        .unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(format!("{ws}?token={token}"))
        .await
        .unwrap();
    let mut stalled = Client { ws };
    assert_eq!(stalled.next().await["type"], "welcome");
    flood(&p, "val").await;
    until_gone(
        &p,
        "val",
        "the stalled client is closed when its token expires",
    )
    .await;
    // What was written reaches it, then the reason.
    assert_eq!(closing_code(&mut stalled).await, Some(4009));
}

#[tokio::test]
async fn a_stuck_write_does_not_hold_up_a_bridge_shutdown() {
    let p = Platform::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws = format!("ws://{}/ws", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut config = patient_bridge(&p, "bridge-stop", Duration::from_secs(3600));
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = ops.local_addr().unwrap().to_string();
    config.ops = Some(ops);
    let bridge = tokio::spawn(notify_bridge::run(config, listener, stop.clone()));
    let mut stalled = p.connect_when_ready(&ws, "wes").await;
    assert_eq!(stalled.next().await["type"], "welcome");
    flood(&p, "wes").await;
    test_support::eventually(
        "the write to wes waits",
        Duration::from_secs(20),
        || async {
            let text = test_support::http_get(&ops_addr, "/metrics").await?;
            let body = text.split_once("\r\n\r\n")?.1;
            let scrape = test_support::prometheus::parse(body).ok()?;
            (scrape.value("bridge_waiting_connections", &[]) >= 1.0).then_some(())
        },
    )
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), bridge)
        .await
        .expect("the bridge stops although a client reads nothing")
        .unwrap()
        .unwrap();
}
