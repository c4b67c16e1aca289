//! Promises a client relies on, each written as the client would check it:
//! replay of large backlogs, resume points past the head, byte-bounded slow
//! consumers, bounded hold-back during slow store reads, stuck writes, honest
//! resume and server-side subscriptions.

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

/// Reads `message` frames, passing on each seq, until `n` arrived.
async fn read_messages(mut c: Client, n: usize, seqs: tokio::sync::mpsc::UnboundedSender<u64>) {
    let mut got = 0;
    while got < n {
        let m = c.next().await;
        if m["type"] == "message" {
            got += 1;
            let _ = seqs.send(m["seq"].as_u64().unwrap());
        }
    }
}

#[tokio::test]
async fn a_burst_of_large_messages_closes_a_stalled_client_at_the_default_byte_bound() {
    // Default settings: 1,024 frames, 1 MiB; pings every 5 s, so that a
    // stalled client is closed within seconds whichever way it goes (below).
    let p = Platform::start_with(|config| config.ping_every = Duration::from_secs(5)).await;
    let mut api = p.api().await;
    let mut stalled = p.connect_stalling("sam").await;
    let reader = p.connect("tia", "").await;
    assert_eq!(stalled.next().await["type"], "welcome");
    // To both inboxes: an inbox keeps every message for its TTL, so a
    // catch-up read (after a link re-attaches on a loaded machine) brings
    // the stalled client all 10 MB; a topic's log keeps its newest 100 and
    // would let such a read skip most of the burst.
    // 200 × 50 KB = 10 MB: far fewer frames than the frame bound. Sent in
    // rounds of 10 that the reader takes in before the next: a reader is a
    // client that keeps within the bound (on a loaded machine this test's own
    // reader may fall 1 MiB behind an unpaced burst, and is then rightly
    // closed too), while the stalled client's 10 MB pile up all the same.
    // Closed as slow (4008) or for silence (1001): see close_code_once_stalled.
    let told = p.close_code_once_stalled(stalled, 0.0);
    let data = format!("\"{}\"", "z".repeat(50 * 1000));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(read_messages(reader, 200, tx));
    let to_both = pb::PublishRequest {
        target: Some(pb::publish_request::Target::Users(pb::UserList {
            user_ids: vec!["sam".into(), "tia".into()],
        })),
        ..to_user("", &data)
    };
    let mut seqs = Vec::new();
    for round in 1..=20 {
        let batch = pb::PublishBatchRequest {
            requests: vec![to_both.clone(); 10],
        };
        api.publish_batch(batch).await.unwrap();
        while seqs.len() < round * 10 {
            let seq = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("the reader is not held back")
                .expect("the reader's socket stays open");
            seqs.push(seq);
        }
    }
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<_>>(),
        "every message, in order"
    );
    let code = told.await.unwrap();
    assert!(
        matches!(code, Some(4008 | 1001)),
        "closed as a slow consumer, or for silence once blocked: {code:?}"
    );
}

#[tokio::test]
async fn live_messages_held_during_a_slow_store_read_are_bounded_and_none_is_lost() {
    // Two replicas. The bridge reads the store through replica A, behind a
    // relay the test pauses: a store read that answers late.
    let p = Platform::start().await;
    let relay =
        test_support::Relay::start(p.grpc.trim_start_matches("http://").parse().unwrap()).await;
    let b = start_svc(&p.db.url, None).await;
    let b_grpc = b.url();
    let mut config = p.bridge_config(
        "bridge-relayed",
        SendBound {
            frames: 32,
            bytes: 1 << 20,
        },
    );
    config.notify_urls = vec![format!("http://{}", relay.addr), b_grpc.clone()];
    let ops_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = ops_listener.local_addr().unwrap().to_string();
    config.ops = Some(ops_listener);
    let ws = p.run_bridge(config).await;
    until_links(&ops, 2).await;
    let mut uma = p.connect_when_ready(&ws, "uma").await;
    assert_eq!(uma.next().await["type"], "welcome");
    let (mut a, mut b) = (
        p.api().await,
        pb::notify_client::NotifyClient::connect(b_grpc)
            .await
            .unwrap(),
    );
    b.publish(to_user("uma", "1")).await.unwrap();
    assert_eq!(uma.next().await["seq"].as_u64(), Some(1));

    relay.pause();
    // 2 commits on A; its live copy waits in the relay. 3 arrives live from
    // B, skips ahead and asks for a store read, which waits in the relay too.
    // 4..=102 are held back meanwhile: three times the bound of 32.
    a.publish(to_user("uma", "2")).await.unwrap();
    for i in 3..=102 {
        b.publish(to_user("uma", &i.to_string())).await.unwrap();
    }
    test_support::eventually(
        "held messages past the bound are shed",
        Duration::from_secs(20),
        || {
            let ops = ops.clone();
            async move {
                (test_support::prometheus::value_at(&ops, "bridge_held_shed_total").await >= 3.0)
                    .then_some(())
            }
        },
    )
    .await;
    relay.resume();
    for seq in 2..=102u64 {
        let m = uma.next().await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("message"), Some(seq)),
            "every message once, in order, and the client is not closed"
        );
    }
    b.publish(to_user("uma", "103")).await.unwrap();
    assert_eq!(uma.next().await["seq"].as_u64(), Some(103));
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
    let mut stalled = p.connect_stalling_to(&ws, "uma").await;
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
    let addr = ws.trim_start_matches("ws://").trim_end_matches("/ws");
    let stream = test_support::stalling_stream(addr.parse().unwrap()).await;
    let (ws, _) = tokio_tungstenite::client_async(
        format!("{ws}?token={token}"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
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
    let mut stalled = p.connect_stalling_to(&ws, "wes").await;
    assert_eq!(stalled.next().await["type"], "welcome");
    flood(&p, "wes").await;
    test_support::eventually(
        "the write to wes waits",
        Duration::from_secs(20),
        || async {
            let waiting =
                test_support::prometheus::value_at(&ops_addr, "bridge_waiting_connections").await;
            (waiting >= 1.0).then_some(())
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

fn subscription(user: &str, topic: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        user_id: user.into(),
        topic: topic.into(),
    }
}

fn topic_presence(topic: &str) -> pb::GetPresenceRequest {
    pb::GetPresenceRequest {
        target: Some(pb::get_presence_request::Target::Topic(topic.into())),
    }
}

/// The next frame after `welcome` and whatever the test skips: a ping's pong
/// proves nothing else was queued before it.
async fn nothing_else_queued(c: &mut Client) {
    c.send(serde_json::json!({"action": "ping", "id": "probe"}))
        .await;
    let next = c.next().await;
    assert_eq!(
        (next["type"].as_str(), next["id"].as_str()),
        (Some("pong"), Some("probe")),
        "{next}"
    );
}

#[tokio::test]
async fn server_side_subscriptions_reach_every_live_and_later_connection() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    let second = p.add_bridge("bridge-two", SendBound::default()).await;
    let mut here = p.connect("ann", "").await;
    let mut there = p.connect_when_ready(&second, "ann").await;
    let mut bystander = p.connect("bob", "").await;
    for c in [&mut here, &mut there, &mut bystander] {
        assert_eq!(c.next().await["type"], "welcome");
    }
    api.publish(to_topic("room:s", "\"before\"")).await.unwrap();

    // Both live connections, on two bridges, follow at once and say so.
    let made = api
        .subscribe(subscription("ann", "room:s"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (made.created, made.topic_seq, made.live_connections),
        (true, 1, 2)
    );
    for c in [&mut here, &mut there] {
        let s = c.next().await;
        assert_eq!(
            (
                s["type"].as_str(),
                s["topic"].as_str(),
                s["source"].as_str(),
                s["seq"].as_u64()
            ),
            (Some("subscribed"), Some("room:s"), Some("server"), Some(1)),
            "{s}"
        );
    }
    let sent = api
        .publish(to_topic("room:s", "\"after\""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.delivered, 2, "both of ann's sockets, not bob's");
    for c in [&mut here, &mut there] {
        let m = c.next().await;
        assert_eq!(
            (m["seq"].as_u64(), m["data"].as_str()),
            (Some(2), Some("after"))
        );
    }
    nothing_else_queued(&mut bystander).await;

    // A later connection follows it from its welcome on.
    let mut later = p.connect("ann", "").await;
    assert_eq!(later.next().await["type"], "welcome");
    let s = later.next().await;
    assert_eq!(
        (s["type"].as_str(), s["source"].as_str(), s["seq"].as_u64()),
        (Some("subscribed"), Some("server"), Some(2))
    );
    let sent = api
        .publish(to_topic("room:s", "\"third\""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.delivered, 3);
    for c in [&mut here, &mut there, &mut later] {
        assert_eq!(c.next().await["seq"].as_u64(), Some(3));
    }
    // Re-subscribing with its own `since` replays what it missed.
    later
        .send(serde_json::json!({"action": "subscribe", "topic": "room:s", "since": 1}))
        .await;
    let s = later.next().await;
    assert_eq!(
        (s["source"].as_str(), s["recovered"].as_bool()),
        (Some("client"), Some(true))
    );
    for seq in 2..=3 {
        assert_eq!(later.next().await["seq"].as_u64(), Some(seq));
    }

    // Presence counts live subscribed connections beside stored rows.
    let presence = api
        .get_presence(topic_presence("room:s"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((presence.subscribers, presence.live_connections), (1, 3));

    // Unsubscribe stops the live ones and the later ones.
    let gone = api
        .unsubscribe(pb::UnsubscribeRequest {
            user_id: "ann".into(),
            topic: "room:s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((gone.removed, gone.live_connections), (true, 3));
    for c in [&mut here, &mut there, &mut later] {
        let u = c.next().await;
        assert_eq!(
            (
                u["type"].as_str(),
                u["topic"].as_str(),
                u["source"].as_str()
            ),
            (Some("unsubscribed"), Some("room:s"), Some("server"))
        );
    }
    let sent = api
        .publish(to_topic("room:s", "\"unheard\""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.delivered, 0);
    let mut last = p.connect("ann", "").await;
    assert_eq!(last.next().await["type"], "welcome");
    nothing_else_queued(&mut last).await;
    let presence = api
        .get_presence(topic_presence("room:s"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((presence.subscribers, presence.live_connections), (0, 0));
}

#[tokio::test]
async fn a_resume_from_before_what_is_kept_is_told_not_recovered() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    // The inbox: seqs 1 and 2 expire at once, 3 is kept.
    for ttl in [1, 1, 3600] {
        let req = pb::PublishRequest {
            ttl_seconds: ttl,
            ..to_user("ivy", "1")
        };
        api.publish(req).await.unwrap();
    }
    // A `room:` log keeps 50: of 60, 11..=60 are left.
    for _ in 0..60 {
        api.publish(to_topic("room:long", "1")).await.unwrap();
    }
    test_support::eventually("seqs 1 and 2 expire", Duration::from_secs(10), || {
        let mut api = api.clone();
        async move {
            let page = api.history(history("ivy")).await.ok()?.into_inner();
            (page.messages.first()?.seq == 3).then_some(())
        }
    })
    .await;

    let mut ivy = p.connect("ivy", "?since=0").await;
    let welcome = ivy.next().await;
    assert_eq!(
        (
            welcome["recovered"].as_bool(),
            welcome["first_seq"].as_u64()
        ),
        (Some(false), Some(3)),
        "{welcome}"
    );
    assert_eq!(ivy.next().await["seq"].as_u64(), Some(3));
    // From a point still kept: recovered.
    let mut again = p.connect("ivy", "?since=2").await;
    let welcome = again.next().await;
    assert_eq!(welcome["recovered"].as_bool(), Some(true), "{welcome}");

    ivy.send(serde_json::json!({"action": "subscribe", "topic": "room:long", "since": 5}))
        .await;
    let s = ivy.next().await;
    assert_eq!(
        (
            s["recovered"].as_bool(),
            s["first_seq"].as_u64(),
            s["seq"].as_u64()
        ),
        (Some(false), Some(11), Some(60)),
        "{s}"
    );
    assert_eq!(ivy.next().await["seq"].as_u64(), Some(11));
    ivy.send(serde_json::json!({"action": "subscribe", "topic": "room:long", "since": 10}))
        .await;
    // (the first replay may still be streaming ahead of the answer)
    let s = loop {
        let frame = ivy.next().await;
        if frame["type"] == "subscribed" {
            break frame;
        }
    };
    assert_eq!(s["recovered"].as_bool(), Some(true), "{s}");
}
