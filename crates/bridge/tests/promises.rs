//! Promises a client relies on, each written as the client would check it:
//! replay of large backlogs, resume points past the head, byte-bounded slow
//! consumers, stuck writes, honest resume and server-side subscriptions.

mod common;

use std::time::Duration;

use common::*;
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
