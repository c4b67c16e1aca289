//! BridgeLink as a bridge speaks it: attach with full state, receive
//! deliveries and kicks, report changes; presence follows.

mod common;

use std::time::Duration;

use common::{FakeBridge, Svc, to_topic, to_user};
use notify_core::ConnectionId;
use notify_proto::v1::{
    self as pb, bridge_down::Msg as Down, bridge_link_client::BridgeLinkClient,
    bridge_up::Msg as Up,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::Streaming;

fn live(id: ConnectionId, user: &str, topics: &[&str]) -> pb::LiveConnection {
    pb::LiveConnection {
        connection_id: id.to_string(),
        user_id: user.into(),
        connected_at_ms: 1,
        topics: topics.iter().map(|t| t.to_string()).collect(),
    }
}

async fn presence(svc: &Svc, user: &str) -> Vec<String> {
    let mut client = svc.client().await;
    let req = pb::GetPresenceRequest {
        target: Some(pb::get_presence_request::Target::UserId(user.into())),
    };
    let answer = client.get_presence(req).await.unwrap().into_inner();
    answer
        .connections
        .into_iter()
        .map(|c| c.connection_id)
        .collect()
}

/// The last seq of alice's inbox.
async fn alice_head(svc: &Svc) -> u64 {
    let mut client = svc.client().await;
    let req = pb::HistoryRequest {
        target: Some(pb::history_request::Target::UserId("alice".into())),
        since: 0,
        limit: 1,
        after_acked: false,
    };
    client.history(req).await.unwrap().into_inner().head_seq
}

/// A bridge lost for this long has its connections closed (short here).
const EXPIRY: Duration = Duration::from_secs(1);

fn short_expiry(config: &mut notify_svc::Config) {
    config.bridge_expiry = EXPIRY;
}

#[tokio::test]
async fn an_attached_bridge_gets_deliveries_and_kicks_and_presence_follows() {
    let svc = Svc::start_with(test_support::TestDb::create().await, short_expiry).await;
    let (phone, laptop) = (ConnectionId::new(), ConnectionId::new());
    let mut bridge = FakeBridge::attach(&svc, "b1", vec![live(phone, "alice", &["room:x"])]).await;
    let mut client = svc.client().await;

    // The Hello's connection is routed and registered.
    let sent = test_support::eventually("alice routed", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let r = client
                .publish(to_user("alice", "1"))
                .await
                .ok()?
                .into_inner();
            (r.delivered == 1).then_some(r)
        }
    })
    .await;
    let Down::Delivery(d) = bridge.next().await else {
        panic!("expected a delivery")
    };
    let m = d.message.unwrap();
    assert_eq!(
        (m.user_id.as_str(), m.message_id.as_str()),
        ("alice", sent.message_id.as_str())
    );
    // The registry is written behind routing, in batches: it follows soon.
    test_support::eventually("phone registered", Duration::from_secs(10), || async {
        (presence(&svc, "alice").await == [phone.to_string()]).then_some(())
    })
    .await;

    // A second device opens and subscribes, each with a ticket: the answer
    // comes once it is in routing, with the feed's positions read after.
    bridge
        .send(Up::Opened(pb::ConnectionOpened {
            connection: Some(live(laptop, "alice", &[])),
            ticket: 11,
        }))
        .await;
    bridge
        .send(Up::Subscribed(pb::TopicSubscribed {
            connection_id: laptop.to_string(),
            topic: "room:x".into(),
            ticket: 12,
            event: 1,
        }))
        .await;
    let mut answers = Vec::new();
    while answers.len() < 2 {
        if let Down::Registered(r) = bridge.next().await {
            answers.push((r.ticket, r.head_seq, r.acked_seq, r.error));
        }
    }
    answers.sort();
    let head = alice_head(&svc).await;
    assert_eq!(
        answers,
        [(11, head, 0, String::new()), (12, 0, 0, String::new())]
    );
    // Answered means routed: the very next topic message reaches both.
    let r = client
        .publish(to_topic("room:x", "2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.delivered, 2);
    // Drain what the probes delivered; every topic delivery names the topic.
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_millis(300), bridge.down.next()).await
    {
        if let Some(Down::Delivery(d)) = msg.msg {
            let m = d.message.unwrap();
            assert!(m.topic == "room:x" || m.user_id == "alice", "{m:?}");
        }
    }

    // Disconnect kicks both of alice's connections with 4003.
    let answer = client
        .disconnect(pb::DisconnectRequest {
            target: Some(pb::disconnect_request::Target::UserId("alice".into())),
            reason: "bye".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.disconnected, 2);
    let Down::Kick(kick) = bridge.next().await else {
        panic!("expected a kick")
    };
    assert_eq!((kick.close_code, kick.reason.as_str()), (4003, "bye"));
    assert_eq!(kick.connection_ids.len(), 2);

    // The bridge closes one; then its stream ends and, once no replica has
    // heard it for the expiry, the registry empties.
    bridge
        .send(Up::Closed(pb::ConnectionClosed {
            connection_id: phone.to_string(),
            close_code: 1000,
            ..Default::default()
        }))
        .await;
    test_support::eventually("phone gone", Duration::from_secs(10), || async {
        (presence(&svc, "alice").await == [laptop.to_string()]).then_some(())
    })
    .await;
    drop(bridge);
    test_support::eventually("bridge detached", Duration::from_secs(10), || async {
        presence(&svc, "alice").await.is_empty().then_some(())
    })
    .await;
    svc.stop().await;
}

#[tokio::test]
async fn client_publishes_commit_and_skip_their_sender() {
    let svc = Svc::start().await;
    let (sender, other) = (ConnectionId::new(), ConnectionId::new());
    let mut bridge = FakeBridge::attach(
        &svc,
        "b2",
        vec![
            live(sender, "sam", &["room:lobby"]),
            live(other, "ola", &["room:lobby"]),
        ],
    )
    .await;
    let publish = |request_id, topic: &str| {
        Up::Publish(pb::ClientPublish {
            request_id,
            connection_id: sender.to_string(),
            user_id: "sam".into(),
            topic: topic.into(),
            event: String::new(),
            data: r#"{"text":"hi"}"#.into(),
        })
    };
    bridge.send(publish(7, "room:lobby")).await;
    let mut result = None;
    let mut delivery = None;
    while result.is_none() || delivery.is_none() {
        match bridge.next().await {
            Down::PublishResult(r) => result = Some(r),
            Down::Delivery(d) => delivery = Some(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (result, delivery) = (result.unwrap(), delivery.unwrap());
    assert_eq!((result.request_id, result.seq, result.code), (7, 1, 0));
    assert_eq!(delivery.exclude_connection_id, sender.to_string());
    assert_eq!(delivery.message.unwrap().data, r#"{"text":"hi"}"#);

    // A bad topic comes back as an error result, nothing stored.
    bridge.send(publish(8, "nope")).await;
    let Down::PublishResult(bad) = bridge.next().await else {
        panic!("expected a result")
    };
    assert_eq!(
        (bad.request_id, bad.code),
        (8, tonic::Code::InvalidArgument as i32)
    );
    let mut client = svc.client().await;
    let seqs = common::all_seqs(
        &mut client,
        pb::history_request::Target::Topic("room:lobby".into()),
    )
    .await;
    assert_eq!(seqs, [1]);
    drop(bridge);
    svc.stop().await;
}

#[tokio::test]
async fn attach_must_start_with_hello() {
    let svc = Svc::start().await;
    let (up, rx) = mpsc::channel(4);
    up.send(pb::BridgeUp {
        msg: Some(Up::Closed(pb::ConnectionClosed {
            connection_id: "x".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut client = BridgeLinkClient::connect(format!("http://{}", svc.grpc))
        .await
        .unwrap();
    let status = client.attach(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("hello"));
    svc.stop().await;
}

#[tokio::test]
async fn acks_from_a_bridge_move_where_history_resumes() {
    let svc = Svc::start().await;
    let conn = ConnectionId::new();
    let bridge = FakeBridge::attach(&svc, "b3", vec![live(conn, "rae", &[])]).await;
    let mut client = svc.client().await;
    for i in 1..=5 {
        client
            .publish(to_user("rae", &i.to_string()))
            .await
            .unwrap();
    }
    let ack = |seq| pb::InboxSeq {
        user_id: "rae".into(),
        seq,
    };
    bridge
        .send(Up::Acks(pb::InboxAcks {
            acks: vec![ack(2), ack(3)],
        }))
        .await;
    let page = test_support::eventually("acks persisted", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let req = pb::HistoryRequest {
                target: Some(pb::history_request::Target::UserId("rae".into())),
                since: 0,
                limit: 0,
                after_acked: true,
            };
            let page = client.history(req).await.ok()?.into_inner();
            (page.acked_seq == 3).then_some(page)
        }
    })
    .await;
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!((seqs, page.head_seq, page.next_since), (vec![4, 5], 5, 5));
    drop(bridge);
    svc.stop().await;
}

#[tokio::test]
async fn a_bridge_that_stops_reading_pins_its_byte_bound_not_gigabytes() {
    let svc = Svc::start_with(test_support::TestDb::create().await, |cfg| {
        cfg.bridge_queue.bytes = 1 << 20;
    })
    .await;
    // A rogue bridge: it attaches with a connection of rex, then never reads.
    let rogue =
        FakeBridge::attach(&svc, "rogue", vec![live(ConnectionId::new(), "rex", &[])]).await;
    let mut api = svc.client().await;
    // 200 × 60 KB = 12 MB for rex: far below the 65,536-message count, far
    // over the 1 MiB byte bound (plus what HTTP/2 windows hold).
    let data = format!("\"{}\"", "r".repeat(60 * 1000));
    for _ in 0..200 {
        api.publish(to_user("rex", &data))
            .await
            .expect("publishing never waits for a bridge");
    }
    let http = svc.http.to_string();
    let dropped = test_support::prometheus::value_at(&http, "notify_delivery_drops_total").await;
    let sent = test_support::prometheus::value_at(&http, "notify_deliveries_total").await;
    assert!(
        dropped > 0.0 && sent < 100.0,
        "live copies past the byte bound are dropped ({sent} queued, {dropped} dropped)"
    );
    // rex loses nothing: the store has every message.
    let page = api
        .history(common::history_of_user("rex", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.head_seq, 200);
    drop(rogue);
}

/// The events a WatchConnections stream sends within `within`, as
/// (position, kind, connection, topic, close code, reason).
async fn events_within(
    stream: &mut Streaming<pb::ConnectionEvents>,
    want: usize,
    within: Duration,
) -> Vec<(u64, i32, String, String, u32, String)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < want {
        let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        let batch = next.expect("stream open").expect("no error");
        assert!(!batch.missed, "nothing swept here");
        for e in batch.events {
            got.push((
                e.position,
                e.kind,
                e.connection_id,
                e.topic,
                e.close_code,
                e.reason,
            ));
        }
    }
    got
}

#[tokio::test]
async fn lifecycle_events_heard_by_two_replicas_stream_once_in_order_and_resume_after_a_lost_bridge()
 {
    use pb::connection_event::Kind;
    let a = Svc::start_with(test_support::TestDb::create().await, short_expiry).await;
    let b = Svc::replica_with(&a.url, short_expiry).await;
    let mut api = b.client().await;
    let mut watch = api
        .watch_connections(pb::WatchConnectionsRequest::default())
        .await
        .unwrap()
        .into_inner();

    // One bridge, linked to both replicas: each hears every report.
    let (kept, brief) = (ConnectionId::new(), ConnectionId::new());
    let hello = vec![live(kept, "alice", &[])];
    let to_a = FakeBridge::attach(&a, "b9", hello.clone()).await;
    let to_b = FakeBridge::attach(&b, "b9", hello).await;
    let reports = [
        Up::Opened(pb::ConnectionOpened {
            connection: Some(live(brief, "bob", &[])),
            ticket: 0,
        }),
        Up::Subscribed(pb::TopicSubscribed {
            connection_id: brief.to_string(),
            topic: "room:x".into(),
            ticket: 0,
            event: 1,
        }),
        // Already following: no event.
        Up::Subscribed(pb::TopicSubscribed {
            connection_id: brief.to_string(),
            topic: "room:x".into(),
            ticket: 0,
            event: 0,
        }),
        Up::Unsubscribed(pb::TopicUnsubscribed {
            connection_id: brief.to_string(),
            topic: "room:x".into(),
            event: 2,
        }),
        Up::Closed(pb::ConnectionClosed {
            connection_id: brief.to_string(),
            close_code: 1000,
            reason: "bye".into(),
            user_id: "bob".into(),
        }),
    ];
    for report in reports {
        to_a.send(report.clone()).await;
        to_b.send(report).await;
    }
    let (k, b_id) = (kept.to_string(), brief.to_string());
    let s = String::new;
    let want = vec![
        (1, Kind::Connected as i32, k.clone(), s(), 0, s()),
        (2, Kind::Connected as i32, b_id.clone(), s(), 0, s()),
        (
            3,
            Kind::Subscribed as i32,
            b_id.clone(),
            "room:x".into(),
            0,
            s(),
        ),
        (
            4,
            Kind::Unsubscribed as i32,
            b_id.clone(),
            "room:x".into(),
            0,
            s(),
        ),
        (
            5,
            Kind::Disconnected as i32,
            b_id.clone(),
            s(),
            1000,
            "bye".into(),
        ),
    ];
    let got = events_within(&mut watch, 5, Duration::from_secs(10)).await;
    assert_eq!(got, want, "each event once, gap-free, in order");
    // Nothing more: the second copies were dropped.
    assert!(
        events_within(&mut watch, 1, Duration::from_millis(1500))
            .await
            .is_empty()
    );

    // The watcher goes away; meanwhile the bridge dies (both links end
    // without a Closed for `kept`).
    drop(watch);
    drop((to_a, to_b));
    tokio::time::sleep(EXPIRY * 3).await;
    // It resumes from the last position it handled: the lost bridge's
    // connection is reported closed, and nothing else.
    let mut resumed = api
        .watch_connections(pb::WatchConnectionsRequest {
            after: 5,
            from_now: false,
        })
        .await
        .unwrap()
        .into_inner();
    let got = events_within(&mut resumed, 1, Duration::from_secs(10)).await;
    assert_eq!(
        got,
        [(
            6,
            Kind::Disconnected as i32,
            k,
            s(),
            1006,
            "bridge_lost".into()
        )]
    );
    // From now: only what happens after the call.
    let mut fresh = api
        .watch_connections(pb::WatchConnectionsRequest {
            after: 0,
            from_now: true,
        })
        .await
        .unwrap()
        .into_inner();
    let later = ConnectionId::new();
    let again = FakeBridge::attach(&a, "b10", vec![live(later, "cy", &[])]).await;
    let got = events_within(&mut fresh, 1, Duration::from_secs(10)).await;
    assert_eq!(
        got,
        [(7, Kind::Connected as i32, later.to_string(), s(), 0, s())]
    );
    drop(again);
    b.stop().await;
    a.stop().await;
}
