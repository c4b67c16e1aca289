//! The bridge end to end: a real notify-svc (in-process, real gRPC, real
//! Postgres), a real bridge, real WebSocket clients.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use futures::{SinkExt, StreamExt};
use notify_auth::{DevToken, Verifier};
use notify_bridge::SendBound;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};

#[tokio::test]
async fn a_client_gets_welcome_replay_then_live_messages_in_order() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    for i in 1..=3 {
        api.publish(to_user("alice", &format!("{{\"n\":{i}}}")))
            .await
            .unwrap();
    }
    let mut alice = p.connect("alice", "").await;
    let welcome = alice.next().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user_id"], "alice");
    assert_eq!(welcome["seq"], 3);
    for i in 1..=3 {
        let m = alice.next().await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("message"), Some(i))
        );
        assert_eq!(m["data"]["n"], i, "data is the JSON value itself");
    }
    // Live: `welcome` comes once the connection is routed, so the very next
    // publish reaches it.
    let sent = api
        .publish(to_user("alice", r#"{"n":4}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.delivered, 1);
    let m = alice.next().await;
    assert_eq!(
        (m["seq"].as_u64(), m["id"].as_str()),
        (Some(4), Some(sent.message_id.as_str()))
    );
    let last = 4;
    // Ack, reconnect: only what came after the ack is replayed.
    alice
        .send(serde_json::json!({"action": "ack", "seq": last}))
        .await;
    api.publish(to_user("alice", r#"{"n":"after"}"#))
        .await
        .unwrap();
    let m = alice.next().await;
    assert_eq!(m["seq"].as_u64(), Some(last + 1));
    drop(alice);
    let mut again = test_support::eventually("ack persisted", Duration::from_secs(10), || async {
        let mut c = p.connect("alice", "").await;
        let welcome = c.next().await;
        assert_eq!(welcome["type"], "welcome");
        let m = c.next().await;
        (m["seq"].as_u64() == Some(last + 1)).then_some(c)
    })
    .await;
    again
        .send(serde_json::json!({"action": "ping", "id": 1}))
        .await;
    let pong = again.next().await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_u64()),
        (Some("pong"), Some(1))
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade_and_bad_frames_get_errors() {
    let p = Platform::start().await;
    for (header, reason) in [(None, None), (Some("Bearer garbage"), Some("malformed"))] {
        let mut req = p.ws.as_str().into_client_request().unwrap();
        if let Some(h) = header {
            req.headers_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("expected an HTTP refusal, got {err:?}");
        };
        assert_eq!(response.status(), 401);
        let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["error"], "unauthorized");
        if let Some(reason) = reason {
            assert_eq!(body["reason"], reason);
        }
    }
    let mut bob = p.connect("bob", "").await;
    assert_eq!(bob.next().await["type"], "welcome");
    bob.send(serde_json::json!({"action": "dance", "id": "d"}))
        .await;
    let e = bob.next().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unknown_action"))
    );
    assert_eq!(
        (e["message"].as_str(), e["id"].as_str()),
        (Some("That's not a valid action"), Some("d"))
    );
    bob.send(serde_json::json!({"action": "subscribe", "topic": "private:carol:x"}))
        .await;
    assert_eq!(bob.next().await["code"], "forbidden");
    bob.send(serde_json::json!({"action": "subscribe", "topic": "fights:live", "id": 5}))
        .await;
    let s = bob.next().await;
    assert_eq!(
        (s["type"].as_str(), s["topic"].as_str(), s["id"].as_u64()),
        (Some("subscribed"), Some("fights:live"), Some(5))
    );
    bob.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(bob.next().await["code"], "bad_request");
}

#[tokio::test]
async fn presence_follows_connections_and_messages_reach_exactly_their_targets() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    let mut phone = p.connect("amy", "").await;
    let mut laptop = p.connect("amy", "").await;
    let mut ben = p.connect("ben", "").await;
    let mut bystander = p.connect("cal", "").await;
    for c in [&mut phone, &mut laptop, &mut ben, &mut bystander] {
        assert_eq!(c.next().await["type"], "welcome");
    }
    // Both of amy's devices registered.
    let connections = p.until_connections("amy", 2).await;
    assert!(connections.iter().all(|c| c.bridge_id == "bridge-test"));

    // A user message reaches both of amy's devices, nobody else.
    let r = api
        .publish(to_user("amy", r#""to amy""#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.delivered, 2);
    for c in [&mut phone, &mut laptop] {
        assert_eq!(c.next().await["data"], "to amy");
    }
    // A user list: amy (2 devices) and ben.
    let list = pb::PublishRequest {
        target: Some(pb::publish_request::Target::Users(pb::UserList {
            user_ids: vec!["amy".into(), "ben".into()],
        })),
        ..to_user("", r#""to both""#)
    };
    assert_eq!(api.publish(list).await.unwrap().into_inner().delivered, 3);
    for c in [&mut phone, &mut laptop, &mut ben] {
        assert_eq!(c.next().await["data"], "to both");
    }
    // A topic: only the subscribers; a client publish skips its sender.
    for c in [&mut laptop, &mut ben] {
        c.send(serde_json::json!({"action": "subscribe", "topic": "room:lobby"}))
            .await;
        assert_eq!(c.next().await["type"], "subscribed");
    }
    let r = publish_to_subscribers(&api, "room:lobby", r#""topic""#, 2).await;
    for c in [&mut laptop, &mut ben] {
        let m = c.next().await;
        assert_eq!(
            (m["id"].as_str(), m["topic"].as_str()),
            (Some(r.message_id.as_str()), Some("room:lobby"))
        );
    }
    ben.send(serde_json::json!({"action": "publish", "topic": "room:lobby", "data": {"hi": 1}, "id": "p"})).await;
    let ack = ben.next().await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("published"), Some("p"))
    );
    let got = laptop.next().await;
    assert_eq!(
        (got["data"]["hi"].as_u64(), got["seq"].as_u64()),
        (Some(1), ack["seq"].as_u64())
    );
    ben.send(serde_json::json!({"action": "publish", "topic": "fights:live", "data": 1}))
        .await;
    assert_eq!(ben.next().await["code"], "forbidden");
    // Broadcast reaches all four sockets.
    let b = pb::PublishRequest {
        target: Some(pb::publish_request::Target::Broadcast(true)),
        ..to_user("", r#""all""#)
    };
    assert_eq!(api.publish(b).await.unwrap().into_inner().delivered, 4);
    for c in [&mut phone, &mut laptop, &mut ben, &mut bystander] {
        assert_eq!(c.next().await["data"], "all");
    }
    // The bystander never got anything else.
    let quiet = tokio::time::timeout(Duration::from_millis(300), bystander.ws.next()).await;
    assert!(quiet.is_err(), "bystander received {quiet:?}");

    // Disconnect closes amy's sockets with 4003 and presence empties.
    let d = api
        .disconnect(pb::DisconnectRequest {
            target: Some(pb::disconnect_request::Target::UserId("amy".into())),
            reason: "account closed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.disconnected, 2);
    for c in [&mut phone, &mut laptop] {
        let close = closing_code(c).await;
        assert_eq!(close, Some(4003));
    }
    p.until_connections("amy", 0).await;
}

#[tokio::test]
async fn offline_messages_replay_in_order_and_acks_move_the_resume_point() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    let batch = pb::PublishBatchRequest {
        requests: (1..=100).map(|i| to_user("dan", &i.to_string())).collect(),
    };
    api.publish_batch(batch).await.unwrap();
    let mut dan = p.connect("dan", "").await;
    assert_eq!(dan.next().await["seq"], 100);
    for i in 1..=100u64 {
        assert_eq!(dan.next().await["seq"].as_u64(), Some(i));
    }
    dan.send(serde_json::json!({"action": "ack", "seq": 60}))
        .await;
    drop(dan);
    let mut again =
        test_support::eventually("ack 60 persisted", Duration::from_secs(10), || async {
            let mut c = p.connect("dan", "").await;
            c.next().await;
            (c.next().await["seq"].as_u64() == Some(61)).then_some(c)
        })
        .await;
    for i in 62..=100u64 {
        assert_eq!(again.next().await["seq"].as_u64(), Some(i));
    }
    // ?since= overrides the ack.
    let mut from_90 = p.connect("dan", "?since=90").await;
    from_90.next().await;
    assert_eq!(from_90.next().await["seq"].as_u64(), Some(91));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_others_get_everything() {
    // Pings every 5 s: see close_code_once_stalled for the two ways it ends.
    let p = Platform::start_with(|config| {
        config.send_queue = SendBound {
            frames: 32,
            bytes: usize::MAX,
        };
        config.ping_every = Duration::from_secs(5);
    })
    .await;
    let mut api = p.api().await;
    let mut stuck = p.connect_stalling("eve").await;
    let mut reader = p.connect("fay", "").await;
    // (the frame bound alone: no byte bound here)
    assert_eq!(stuck.next().await["type"], "welcome");
    assert_eq!(reader.next().await["type"], "welcome");
    for c in [&mut stuck, &mut reader] {
        c.send(serde_json::json!({"action": "subscribe", "topic": "room:burst"}))
            .await;
        assert_eq!(c.next().await["type"], "subscribed");
    }
    // ~10 MB to the topic while eve reads nothing: the socket buffers and her
    // queue (32 here) fill up; the bridge must close her, not wait for her.
    let data = format!("\"{}\"", "x".repeat(60 * 1024));
    let told = p.close_code_once_stalled(stuck, 0.0);
    let reader_task = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < 170 {
            let m = reader.next().await;
            if m["type"] == "message" {
                seqs.push(m["seq"].as_u64().unwrap());
            }
        }
        seqs
    });
    for _ in 0..170 {
        let req = to_topic("room:burst", &data);
        api.publish(req).await.unwrap();
    }
    let seqs = tokio::time::timeout(Duration::from_secs(30), reader_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seqs,
        (1..=170).collect::<Vec<_>>(),
        "the reader got everything in order"
    );
    let code = told.await.unwrap();
    assert!(
        matches!(code, Some(4008 | 1001)),
        "closed as a slow consumer, or for silence once blocked: {code:?}"
    );
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012() {
    let p = Platform::start().await;
    let mut gus = p.connect("gus", "").await;
    assert_eq!(gus.next().await["type"], "welcome");
    p.shutdown.cancel();
    assert_eq!(closing_code(&mut gus).await, Some(1012));
}

#[tokio::test]
async fn a_storm_during_connect_arrives_exactly_once_in_order() {
    let p = Platform::start().await;
    let api = p.api().await;
    // 5,000 messages to hal, published by 8 callers while hal connects and replays.
    let storm = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut api = api.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..625 {
                    api.publish(to_user("hal", "1")).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    // Connect once the storm is under way, so replay and live overlap.
    let probe = p.api().await;
    test_support::eventually("storm under way", Duration::from_secs(10), || {
        let mut probe = probe.clone();
        async move {
            let head = probe
                .history(history("hal"))
                .await
                .ok()?
                .into_inner()
                .head_seq;
            (head >= 200).then_some(())
        }
    })
    .await;
    let mut hal = p.connect("hal", "").await;
    assert_eq!(hal.next().await["type"], "welcome");
    for expected in 1..=5000u64 {
        let m = hal.next().await;
        assert_eq!(m["seq"].as_u64(), Some(expected), "no gap, no duplicate");
    }
    storm.await.unwrap();
    // After the last message only the badge's counts may follow.
    while let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), hal.ws.next()).await {
        let text = match extra {
            Some(Ok(Message::Text(text))) => text,
            other => panic!("nothing but counts after 5000: {other:?}"),
        };
        let frame: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            frame["type"], "counts",
            "nothing but counts after 5000: {frame}"
        );
    }
}

#[tokio::test]
async fn two_bridges_share_one_notify_svc() {
    let p = Platform::start().await;
    let second = p.add_bridge("bridge-two", SendBound::default()).await;
    let mut api = p.api().await;
    let mut ivy = p.connect("ivy", "").await;
    let mut jon = p.connect_to(&second, "jon", "").await;
    let mut jon_first = p.connect("jon", "").await;
    for c in [&mut ivy, &mut jon, &mut jon_first] {
        assert_eq!(c.next().await["type"], "welcome");
        c.send(serde_json::json!({"action": "subscribe", "topic": "fights:live"}))
            .await;
        assert_eq!(c.next().await["type"], "subscribed");
    }
    let r = publish_to_subscribers(&api, "fights:live", r#""go""#, 3).await;
    for c in [&mut ivy, &mut jon, &mut jon_first] {
        assert_eq!(c.next().await["id"], r.message_id.as_str());
    }
    let to_jon = api
        .publish(to_user("jon", r#""both devices""#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(to_jon.delivered, 2);
    for c in [&mut jon, &mut jon_first] {
        assert_eq!(c.next().await["data"], "both devices");
    }
}

#[tokio::test]
async fn clients_keep_their_sockets_across_a_notify_svc_restart() {
    let mut p = Platform::start().await;
    let mut kim = p.connect("kim", "").await;
    assert_eq!(kim.next().await["type"], "welcome");
    kim.send(serde_json::json!({"action": "subscribe", "topic": "room:r"}))
        .await;
    assert_eq!(kim.next().await["type"], "subscribed");
    p.restart_svc().await;
    // The bridge re-attaches with its full state: kim's inbox and topic work again.
    let mut api = p.api().await;
    let r = test_support::eventually("bridge re-attached", Duration::from_secs(20), || {
        let mut api = api.clone();
        async move {
            let r = api
                .publish(to_user("kim", r#""after restart""#))
                .await
                .ok()?
                .into_inner();
            (r.delivered == 1).then_some(r)
        }
    })
    .await;
    loop {
        let m = kim.next().await;
        assert_eq!(m["type"], "message", "the socket stayed open");
        if m["id"] == r.message_id.as_str() {
            break;
        }
    }
    let topic = to_topic("room:r", r#""topic after restart""#);
    assert_eq!(api.publish(topic).await.unwrap().into_inner().delivered, 1);
    assert_eq!(kim.next().await["data"], "topic after restart");
}

#[tokio::test]
async fn a_user_over_the_connection_limit_is_refused_with_429() {
    let p = Platform::start().await;
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut c = p.connect("lou", "").await;
        assert_eq!(c.next().await["type"], "welcome");
        open.push(c);
    }
    let url = format!("{}?token={}", p.ws, p.token("lou"));
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected an HTTP refusal, got {err:?}");
    };
    assert_eq!(response.status(), 429);
    // Another user is not affected.
    let mut other = p.connect("max", "").await;
    assert_eq!(other.next().await["type"], "welcome");
}

#[tokio::test]
async fn limits_refresh_and_topic_replay() {
    let p = Platform::start().await;
    let mut api = p.api().await;
    let mut ned = p.connect("ned", "").await;
    assert_eq!(ned.next().await["type"], "welcome");

    // Topic `since`: the missed part of the log, then live.
    for i in 1..=3 {
        let req = pb::PublishRequest {
            target: Some(pb::publish_request::Target::Topic("room:t".into())),
            ..to_user("", &i.to_string())
        };
        api.publish(req).await.unwrap();
    }
    ned.send(serde_json::json!({"action": "subscribe", "topic": "room:t", "since": 1}))
        .await;
    let s = ned.next().await;
    assert_eq!(
        (s["type"].as_str(), s["seq"].as_u64()),
        (Some("subscribed"), Some(3))
    );
    for seq in 2..=3u64 {
        let m = ned.next().await;
        assert_eq!(
            (m["topic"].as_str(), m["seq"].as_u64()),
            (Some("room:t"), Some(seq))
        );
    }
    let req = to_topic("room:t", "4");
    api.publish(req).await.unwrap();
    assert_eq!(ned.next().await["seq"].as_u64(), Some(4));

    // Refresh with a new token of the same user.
    ned.send(serde_json::json!({"action": "refresh", "token": p.token("ned"), "id": "r"}))
        .await;
    let r = ned.next().await;
    assert_eq!(
        (r["type"].as_str(), r["id"].as_str()),
        (Some("refreshed"), Some("r"))
    );
    assert!(r["exp"].as_u64().unwrap() > 0);
    ned.send(serde_json::json!({"action": "refresh", "token": p.token("someone-else")}))
        .await;
    assert_eq!(ned.next().await["code"], "forbidden");

    // Over 200 frames at once (burst 200, 100/s): some are rate limited.
    for _ in 0..300 {
        ned.send(serde_json::json!({"action": "ping"})).await;
    }
    let mut limited = 0;
    for _ in 0..300 {
        if ned.next().await["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited > 0, "no frame was rate limited");

    // A frame over 64 KiB: too_large, then the socket closes.
    let big = format!(
        "{{\"action\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    ned.ws.send(Message::text(big)).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ned.ws.next())
            .await
            .unwrap();
        match frame {
            Some(Ok(Message::Text(t))) if t.as_str().contains("too_large") => break,
            Some(Ok(_)) => continue,
            other => panic!("expected too_large, got {other:?}"),
        }
    }
    assert_eq!(closing_code(&mut ned).await, Some(1009));
}

#[tokio::test]
async fn realm_and_admin_claims_open_their_topics() {
    let p = Platform::start().await;
    let connect = |token: String| {
        let ws = p.ws.clone();
        async move {
            let (ws, _) = tokio_tungstenite::connect_async(format!("{ws}?token={token}"))
                .await
                .unwrap();
            let mut client = Client { ws };
            assert_eq!(client.next().await["type"], "welcome");
            client
        }
    };
    let mint = |user: &str, realm: Option<&str>, groups: &[&str]| {
        p.issuer
            .mint(&DevToken {
                realm: realm.map(String::from),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                ..DevToken::access(user)
            })
            .unwrap()
    };
    let mut clients = [
        connect(mint("eve", Some("eu"), &[])).await,
        connect(mint("root", None, &["support", "admin"])).await,
    ];
    // (client: 0 eve in realm eu, 1 root in group admin; topic; answer)
    for (who, topic, answer) in [
        (0, "realm:eu:odds", "subscribed"),
        (0, "realm:us:odds", "error"),
        (0, "private:bob:inbox", "error"),
        (1, "realm:us:odds", "subscribed"),
        (1, "private:bob:inbox", "subscribed"),
        (1, "chat:nope", "error"),
    ] {
        clients[who]
            .send(serde_json::json!({"action": "subscribe", "topic": topic}))
            .await;
        assert_eq!(clients[who].next().await["type"], answer, "{who} {topic}");
    }
}

#[tokio::test]
async fn an_expired_token_closes_the_socket_with_4009() {
    let p = Platform::start().await;
    let token = p
        .issuer
        .mint(&DevToken {
            ttl: Duration::from_secs(2),
            ..DevToken::access("oz")
        })
        .unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={token}", p.ws))
        .await
        .unwrap();
    let mut oz = Client { ws };
    assert_eq!(oz.next().await["type"], "welcome");
    assert_eq!(closing_code(&mut oz).await, Some(4009));
}

#[tokio::test]
async fn a_bridge_that_reaches_no_notify_svc_refuses_with_503() {
    let p = Platform::start().await;
    // Nothing listens on this port.
    let mut config = p.bridge_config("bridge-alone", SendBound::default());
    config.notify_urls = vec![format!("http://127.0.0.1:{}", test_support::free_port())];
    let ws = p.run_bridge(config).await;
    let mut req = ws.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", p.token("kim")).parse().unwrap(),
    );
    let refused = test_support::eventually("the bridge listens", Duration::from_secs(10), || {
        let req = req.clone();
        async move {
            match tokio_tungstenite::connect_async(req).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Some(response),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(refused.status(), 503);
    let body: Value = serde_json::from_slice(refused.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"], "unavailable");
}

#[tokio::test]
async fn a_client_that_answers_no_pings_is_closed_and_one_that_does_stays() {
    let p = Platform::start().await;
    let mut config = p.bridge_config("bridge-pings", SendBound::default());
    config.ping_every = Duration::from_millis(100);
    let ws = p.run_bridge(config).await;
    let mut silent = p.connect_to(&ws, "lea", "").await;
    let mut alive = p.connect_to(&ws, "max", "").await;
    assert_eq!(silent.next().await["type"], "welcome");
    assert_eq!(alive.next().await["type"], "welcome");
    // `alive` reads (tungstenite answers each ping); `silent` does not read
    // at all for a while, so its pongs never go out.
    let reading = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
        let mut pings = 0;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, alive.ws.next()).await {
            match msg {
                Message::Ping(_) => pings += 1,
                Message::Close(frame) => panic!("a client that answers was closed: {frame:?}"),
                _ => {}
            }
        }
        (pings, alive)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (pings, mut alive) = reading.await.unwrap();
    assert!(pings >= 4, "pings every 100 ms, got {pings}");
    assert_eq!(closing_code(&mut silent).await, Some(1001));
    // The answering client still works.
    alive
        .send(serde_json::json!({"action": "ping", "id": 1}))
        .await;
    assert_eq!(alive.next().await["type"], "pong");
}

#[tokio::test]
async fn cognito_users_connect_and_signed_out_or_disabled_ones_are_refused_and_closed() {
    use notify_auth::{Cognito, CognitoConfig, KeySet, KeySource, VerifierConfig};
    use test_support::cognito::{REGION, TestPool};

    let p = Platform::start().await;
    let pool = TestPool::create().await;
    pool.add_user("alice", Some("eu")).await;
    pool.add_user("bob", None).await;
    let cognito = Arc::new(
        Cognito::new(&CognitoConfig {
            endpoint_url: Some(pool.endpoint.clone()),
            credentials: Some(("test".into(), "test".into())),
            // Every check asks: the sign-out must show at once here.
            revocation_ttl: Duration::ZERO,
            ..CognitoConfig::new(REGION, &pool.pool_id)
        })
        .await,
    );
    let sub = cognito.sub_of("alice").await.unwrap().expect("alice's sub");
    let mut config = p.bridge_config("bridge-cognito", SendBound::default());
    config.verifier = Verifier::new(
        KeySet::new(KeySource::parse(&pool.jwks_url()).unwrap()),
        VerifierConfig {
            issuer: pool.issuer(),
            client_ids: vec![pool.client_id.clone()],
            leeway: Duration::from_secs(5),
        },
    );
    // Open sockets are asked about again every second.
    config.revocation = Some(notify_bridge::RevocationCheck {
        cognito,
        every: Duration::from_secs(1),
    });
    // A notify-svc replica that knows the pool resolves `username:`; this
    // bridge attaches to it alone, so a socket that got `welcome` is routed there.
    let mut with_pool = notify_svc::Config::for_database(&p.db.url).unwrap();
    with_pool.cognito = Some(CognitoConfig {
        endpoint_url: Some(pool.endpoint.clone()),
        credentials: Some(("test".into(), "test".into())),
        ..CognitoConfig::new(REGION, &pool.pool_id)
    });
    let replica = notify_harness::InProcessSvc::start(with_pool).await;
    let replica_url = replica.url();
    config.notify_urls = vec![replica_url.clone()];
    let ws = p.run_bridge(config).await;
    let tokens = pool.sign_in("alice").await;
    let connect = |token: String| {
        let url = format!("{ws}?token={token}");
        async move {
            let ws = test_support::eventually(
                "the bridge takes sockets",
                Duration::from_secs(10),
                || {
                    let url = url.clone();
                    async move { Some(tokio_tungstenite::connect_async(url).await.ok()?.0) }
                },
            )
            .await;
            let mut client = Client { ws };
            assert_eq!(client.next().await["type"], "welcome");
            client
        }
    };
    // Both of a pool user's tokens connect; a message to its sub reaches both.
    let mut by_access = connect(tokens.access.clone()).await;
    let mut by_id = connect(tokens.id.clone()).await;
    let mut api = NotifyClient::connect(replica_url).await.unwrap();
    api.publish(to_user(&sub, r#"{"hi":1}"#)).await.unwrap();
    // So does one addressed by username, resolved with AdminGetUser.
    let by_name = api
        .publish(to_user("username:alice", r#"{"hi":2}"#))
        .await
        .expect("username target")
        .into_inner();
    assert_eq!(by_name.delivered, 2, "both sockets routed");
    for client in [&mut by_access, &mut by_id] {
        for seq in [1, 2] {
            let m = client.next().await;
            assert_eq!(
                (m["type"].as_str(), m["seq"].as_u64()),
                (Some("message"), Some(seq))
            );
        }
    }

    // Signed out everywhere: the access token still verifies, Cognito says no.
    pool.sign_out("alice").await;
    let err = tokio_tungstenite::connect_async(format!("{ws}?token={}", tokens.access))
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected an HTTP refusal, got {err:?}");
    };
    assert_eq!(response.status(), 401);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["reason"], "revoked");
    // The open sockets close with 4009 within the re-check interval: the
    // access token's at once, the ID token's with its session (Cognito
    // cannot be asked about an ID token's sign-out; its access token can).
    assert_eq!(closing_code(&mut by_access).await, Some(4009));
    assert_eq!(closing_code(&mut by_id).await, Some(4009));
    for token in [&tokens.access, &tokens.id] {
        let err = tokio_tungstenite::connect_async(format!("{ws}?token={token}"))
            .await
            .unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("expected an HTTP refusal, got {err:?}");
        };
        assert_eq!(response.status(), 401, "a token of the ended session");
    }

    // A user on an ID token alone, disabled by an admin: closed, then refused.
    let bob = pool.sign_in("bob").await;
    let mut bob_socket = connect(bob.id.clone()).await;
    pool.disable("bob").await;
    assert_eq!(closing_code(&mut bob_socket).await, Some(4009));
    let err = tokio_tungstenite::connect_async(format!("{ws}?token={}", bob.id))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 401),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_slowloris_upgrade_is_cut_off_and_others_still_connect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Platform::start().await;
    let mut config = p.bridge_config(
        "bridge-slow",
        SendBound {
            frames: 64,
            ..SendBound::default()
        },
    );
    config.header_timeout = Duration::from_millis(300);
    let ws = p.run_bridge(config).await;
    let addr = ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    // Half a request, then nothing: the bridge hangs up after the timeout.
    let mut slow = test_support::eventually("the bridge listens", Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { TcpStream::connect(addr).await.ok() }
    })
    .await;
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: webs")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest))
        .await
        .expect("the bridge closes a stalled request within 5 s")
        .ok();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "cut off too early"
    );
    // Meanwhile a real client is unaffected.
    let mut alice = p.connect_when_ready(&ws, "alice").await;
    assert_eq!(alice.next().await["type"], "welcome");
}

#[tokio::test]
async fn a_connection_follows_at_most_its_share_of_topics() {
    let p = Platform::start().await;
    let mut config = p.bridge_config(
        "bridge-subs",
        SendBound {
            frames: 64,
            ..SendBound::default()
        },
    );
    config.max_subscriptions = 3;
    let ws = p.run_bridge(config).await;
    let mut zoe = p.connect_when_ready(&ws, "zoe").await;
    assert_eq!(zoe.next().await["type"], "welcome");
    let mut subscribe = async |topic: &str| {
        zoe.send(serde_json::json!({"action": "subscribe", "topic": topic}))
            .await;
        zoe.next().await
    };
    for n in 1..=3 {
        assert_eq!(subscribe(&format!("room:r{n}")).await["type"], "subscribed");
    }
    let refused = subscribe("room:r4").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("at most 3"));
    // Subscribing again to a followed topic costs nothing.
    assert_eq!(subscribe("room:r2").await["type"], "subscribed");
    zoe.send(serde_json::json!({"action": "unsubscribe", "topic": "room:r1"}))
        .await;
    assert_eq!(zoe.next().await["type"], "unsubscribed");
    zoe.send(serde_json::json!({"action": "subscribe", "topic": "room:r4"}))
        .await;
    assert_eq!(zoe.next().await["type"], "subscribed");
}

#[tokio::test]
async fn invalid_utf8_huge_headers_and_query_abuse_get_clear_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let p = Platform::start().await;
    let addr =
        p.ws.trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .to_owned();

    // A text frame that is not UTF-8: closed with 1007.
    let mut eve = p.connect_when_ready(&p.ws, "eve").await;
    assert_eq!(eve.next().await["type"], "welcome");
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    eve.ws.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(closing_code(&mut eve).await, Some(1007));

    // Raw HTTP: what does the bridge answer to this request?
    let answer = async |request: Vec<u8>| {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(&request).await;
        let mut out = Vec::new();
        // Refusals close the connection: read_to_end ends without waiting.
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let upgrade = |extra: &str, query: &str| {
        format!(
            "GET /ws{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    // 1 MiB of headers: refused before anything else runs.
    let huge = format!("X-Pad: {}\r\n", "a".repeat(1024 * 1024));
    let status = answer(upgrade(&huge, "")).await;
    assert!(
        status.is_empty() || status.starts_with("HTTP/1.1 431"),
        "{status:.80}"
    );
    // Ten thousand query parameters and a bad `since`: 400 naming it.
    let query = format!("?{}since=-1", "a=b&".repeat(10_000));
    let status = answer(upgrade("Authorization: Bearer x\r\n", &query)).await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status:.80}");
    assert!(status.contains("since"), "{status:.200}");
    // A token that is not a JWT, in the header or the query: 401, no upgrade.
    let status = answer(upgrade("Authorization: Bearer \u{1}\u{2}\r\n", "")).await;
    assert!(status.starts_with("HTTP/1.1 4"), "{status:.80}");
    let status = answer(upgrade("", &format!("?token={}", "%ff".repeat(3000)))).await;
    assert!(status.starts_with("HTTP/1.1 401"), "{status:.80}");

    // And the bridge still serves everyone else.
    let mut ivy = p.connect_when_ready(&p.ws, "ivy").await;
    assert_eq!(ivy.next().await["type"], "welcome");
}

/// Opens a WebSocket to `ws` from source address `from` (127.0.0.x).
async fn connect_from(
    ws: &str,
    from: [u8; 4],
    token: &str,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let addr: std::net::SocketAddr = ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(from), 0).into())
        .unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut req = ws.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    Ok(tokio_tungstenite::client_async(req, stream).await?.0)
}

#[tokio::test]
async fn a_connect_flood_from_one_address_gets_429_and_other_addresses_do_not() {
    let p = Platform::start().await;
    let mut config = p.bridge_config(
        "bridge-peers",
        SendBound {
            frames: 64,
            ..SendBound::default()
        },
    );
    (config.connect_rate_per_ip, config.connect_burst_per_ip) = (1, 3);
    let ws = p.run_bridge(config).await;
    let token = p.token("fay");
    // Ready (its link attached), asked from an address of its own.
    test_support::eventually(
        "the bridge takes sockets",
        Duration::from_secs(10),
        || async { connect_from(&ws, [127, 0, 0, 9], &token).await.ok() },
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            connect_from(&ws, [127, 0, 0, 2], &token)
                .await
                .expect("within the burst"),
        );
    }
    let err = connect_from(&ws, [127, 0, 0, 2], &token).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected an HTTP refusal, got {err:?}");
    };
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // Another address is not held back, and the open sockets stay open.
    connect_from(&ws, [127, 0, 0, 3], &token)
        .await
        .expect("another address connects");
    for socket in &mut open {
        let welcome = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(welcome.to_text().unwrap().contains("welcome"));
    }
}

/// One HTTP/1.0 request to the bridge's port: (status, body).
async fn http(
    ws_url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = ws_url.trim_start_matches("ws://").trim_end_matches("/ws");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[tokio::test]
async fn the_dev_panel_is_served_and_only_admins_publish_from_it() {
    let p = Platform::start().await;
    let (status, page) = http(&p.ws, "GET", "/panel", None, "").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Dev Panel") && page.contains("/panel/panel.js"),
        "{page}"
    );
    for asset in [
        "/panel/panel.js",
        "/panel/panel.css",
        "/panel/client/index.js",
        "/panel/client/client.js",
    ] {
        let (status, body) = http(&p.ws, "GET", asset, None, "").await;
        assert_eq!(status, 200, "{asset}");
        assert!(!body.is_empty(), "{asset}");
    }
    assert_eq!(http(&p.ws, "GET", "/panel/nope.js", None, "").await.0, 404);

    let mut alice = p.connect_when_ready(&p.ws, "alice").await;
    assert_eq!(alice.next().await["type"], "welcome");
    let admin = p
        .issuer
        .mint(&DevToken {
            groups: vec!["admin".into()],
            ..DevToken::access("root")
        })
        .unwrap();
    let publish =
        r#"{"user":"alice","event":"panel.test","data":{"text":"hi"},"idempotency_key":"k1"}"#;
    let cases = [
        (None::<String>, publish, 401, "unauthorized"),
        (Some("garbage".to_owned()), publish, 401, "unauthorized"),
        (Some(p.token("bob")), publish, 403, "forbidden"),
        (Some(admin.clone()), "{not json", 400, "bad_request"),
        (
            Some(admin.clone()),
            r#"{"user":"alice","topic":"room:x","data":1}"#,
            400,
            "bad_request",
        ),
        (
            Some(admin.clone()),
            r#"{"user":"alice","data":1,"extra":2}"#,
            400,
            "bad_request",
        ),
        (
            Some(admin.clone()),
            r#"{"topic":"nope:x","data":1}"#,
            400,
            "publish_failed",
        ),
    ];
    for (token, body, want, code) in cases {
        let (status, answer) =
            http(&p.ws, "POST", "/panel/api/publish", token.as_deref(), body).await;
        assert_eq!(status, want, "{body}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"], code, "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let huge = format!(r#"{{"user":"alice","data":"{}"}}"#, "x".repeat(100 * 1024));
    assert_eq!(
        http(&p.ws, "POST", "/panel/api/publish", Some(&admin), &huge)
            .await
            .0,
        413
    );

    // The admin's publish is a real one: alice gets it; a double submit is stored once.
    let (status, answer) = http(&p.ws, "POST", "/panel/api/publish", Some(&admin), publish).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["seq"], 1);
    let message = alice.next().await;
    assert_eq!(message["event"], "panel.test");
    assert_eq!(message["data"]["text"], "hi");
    let (_, again) = http(&p.ws, "POST", "/panel/api/publish", Some(&admin), publish).await;
    assert_eq!(
        serde_json::from_str::<Value>(&again).unwrap()["duplicate"],
        true
    );
}

/// A dev-issuer token for `user` expiring at `exp` (any u64).
fn token_expiring_at(p: &Platform, user: &str, exp: u64) -> String {
    p.issuer
        .sign(&serde_json::json!({
            "sub": user,
            "iss": p.issuer.issuer(),
            "client_id": p.issuer.client_id(),
            "token_use": "access",
            "exp": exp,
        }))
        .unwrap()
}

#[tokio::test]
async fn a_token_expiring_beyond_any_clock_is_refused_and_a_failed_refresh_leaves_no_ghost() {
    let p = Platform::start().await;
    for exp in [u64::MAX, i64::MAX as u64 + 1, i64::MAX as u64] {
        let token = token_expiring_at(&p, "oli", exp);
        let err = tokio_tungstenite::connect_async(format!("{}?token={token}", p.ws))
            .await
            .unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("exp {exp}: expected an HTTP refusal, got {err:?}");
        };
        assert_eq!(response.status(), 401, "exp {exp}");
    }
    // On an open socket, a refresh with one is refused and the socket lives.
    let mut oli = p.connect("oli", "").await;
    assert_eq!(oli.next().await["type"], "welcome");
    let token = token_expiring_at(&p, "oli", u64::MAX);
    oli.send(serde_json::json!({"action": "refresh", "token": token, "id": "r"}))
        .await;
    let refused = oli.next().await;
    assert_eq!(
        (refused["type"].as_str(), refused["id"].as_str()),
        (Some("error"), Some("r")),
        "{refused}"
    );
    let mut api = p.api().await;
    let sent = api.publish(to_user("oli", "1")).await.unwrap().into_inner();
    assert_eq!(sent.delivered, 1);
    assert_eq!(oli.next().await["seq"].as_u64(), Some(1));
    // Gone, it is gone from presence and routing: no ghost stays behind.
    drop(oli);
    p.until_connections("oli", 0).await;
    let sent = api.publish(to_user("oli", "2")).await.unwrap().into_inner();
    assert_eq!(sent.delivered, 0, "nothing routed to a ghost");
}

/// The Content-Security-Policy the panel page is served with, asked for
/// under `host`.
async fn panel_policy(ws_url: &str, host: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = ws_url.trim_start_matches("ws://").trim_end_matches("/ws");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /panel HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-security-policy")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no policy: {answer}"))
}

#[tokio::test]
async fn the_panel_may_open_websockets_to_its_own_bridge_only() {
    let p = Platform::start().await;
    let addr = p.ws.trim_start_matches("ws://").trim_end_matches("/ws");
    let policy = panel_policy(&p.ws, addr).await;
    let connect = policy
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("connect-src"))
        .unwrap_or_else(|| panic!("{policy}"))
        .to_owned();
    assert_eq!(
        connect,
        format!("connect-src 'self' ws://{addr}/ws wss://{addr}/ws"),
        "{policy}"
    );
    // A Host header cannot write the policy.
    let policy = panel_policy(&p.ws, "evil.example; connect-src *").await;
    assert!(
        policy.contains("connect-src 'self';") && !policy.contains('*'),
        "{policy}"
    );
}

/// Opens `users.len()` sockets at once on `ws`: the open ones, and the
/// refusals' HTTP statuses.
async fn connect_at_once(p: &Platform, ws: &str, users: &[String]) -> (Vec<Client>, Vec<u16>) {
    let attempts = users.iter().map(|user| {
        let url = format!("{ws}?token={}", p.token(user));
        async move { tokio_tungstenite::connect_async(url).await }
    });
    let (mut open, mut refused) = (Vec::new(), Vec::new());
    for outcome in futures::future::join_all(attempts).await {
        match outcome {
            Ok((ws, _)) => open.push(Client { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                refused.push(r.status().as_u16())
            }
            Err(e) => panic!("neither open nor refused: {e:?}"),
        }
    }
    (open, refused)
}

#[tokio::test]
async fn simultaneous_connects_cannot_pass_the_connection_limits() {
    let p = Platform::start().await;
    // One user, 30 at once, against 10 per user.
    let users = vec!["pia".to_owned(); 30];
    let (open, refused) = connect_at_once(&p, &p.ws, &users).await;
    assert_eq!((open.len(), refused.len()), (10, 20));
    assert!(refused.iter().all(|s| *s == 429), "{refused:?}");
    // Places come back when sockets close.
    drop(open);
    test_support::eventually("places are given back", Duration::from_secs(10), || async {
        let (open, _) = connect_at_once(&p, &p.ws, &users[..10]).await;
        (open.len() == 10).then_some(())
    })
    .await;

    // A bridge of 15, 40 users at once.
    let mut config = p.bridge_config("small", SendBound::default());
    config.max_connections = 15;
    let small = p.run_bridge(config).await;
    drop(p.connect_when_ready(&small, "probe").await);
    let users: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    let (open, refused) = test_support::eventually(
        "the probe's place is given back",
        Duration::from_secs(10),
        || async {
            let (open, refused) = connect_at_once(&p, &small, &users).await;
            (open.len() == 15).then_some((open, refused))
        },
    )
    .await;
    assert_eq!(refused.len(), 25);
    assert!(refused.iter().all(|s| *s == 503), "{refused:?}");
    drop(open);
}

#[tokio::test]
async fn a_refresh_drops_the_topics_the_new_token_may_not_hold() {
    let p = Platform::start().await;
    let in_realm = |realm: &str| {
        p.issuer
            .mint(&DevToken {
                realm: Some(realm.into()),
                ..DevToken::access("rue")
            })
            .unwrap()
    };
    let url = format!("{}?token={}", p.ws, in_realm("eu"));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut rue = Client { ws };
    assert_eq!(rue.next().await["type"], "welcome");
    for topic in ["realm:eu:news", "room:lobby"] {
        rue.send(serde_json::json!({"action": "subscribe", "topic": topic}))
            .await;
        assert_eq!(rue.next().await["type"], "subscribed", "{topic}");
    }
    // A backend's subscription to the realm stays: the server holds it.
    let mut api = p.api().await;
    api.subscribe(pb::SubscribeRequest {
        user_id: "rue".into(),
        topic: "realm:eu:desk".into(),
    })
    .await
    .unwrap();
    let server = rue.next().await;
    assert_eq!(
        (server["type"].as_str(), server["source"].as_str()),
        (Some("subscribed"), Some("server"))
    );

    // Moved to another realm: the refreshed token may not hold realm:eu:news.
    rue.send(serde_json::json!({"action": "refresh", "token": in_realm("us"), "id": "r"}))
        .await;
    assert_eq!(rue.next().await["type"], "refreshed");
    let dropped = rue.next().await;
    assert_eq!(
        (
            dropped["type"].as_str(),
            dropped["topic"].as_str(),
            dropped["source"].as_str()
        ),
        (Some("unsubscribed"), Some("realm:eu:news"), Some("policy")),
        "{dropped}"
    );
    assert!(
        dropped["reason"]
            .as_str()
            .is_some_and(|r| r.contains("realm")),
        "{dropped}"
    );
    // Nothing more published there reaches it; the room and the backend's
    // topic still do.
    api.publish(to_topic("realm:eu:news", "1")).await.unwrap();
    api.publish(to_topic("room:lobby", "2")).await.unwrap();
    api.publish(to_topic("realm:eu:desk", "3")).await.unwrap();
    for topic in ["room:lobby", "realm:eu:desk"] {
        let m = rue.next().await;
        assert_eq!(
            (m["type"].as_str(), m["topic"].as_str()),
            (Some("message"), Some(topic))
        );
    }
}

/// A WebSocket upgrade through `ws` whose connection starts with a PROXY v2
/// header naming `client`: the HTTP status the bridge answers.
async fn upgrade_as(p: &Platform, ws: &str, client: &str) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let addr: std::net::SocketAddr = ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let header = notify_bridge::proxy_protocol::header_for(client.parse().unwrap(), addr);
    stream.write_all(&header).await.unwrap();
    let url = format!("{ws}?token={}", p.token("pax"));
    match tokio_tungstenite::client_async(url, stream).await {
        Ok(_) => Some(101),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Some(r.status().as_u16()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn behind_a_tls_terminating_balancer_the_proxy_header_names_the_client() {
    let p = Platform::start().await;
    let mut config = p.bridge_config("behind-nlb", SendBound::default());
    config.proxy_protocol = true;
    config.connect_rate_per_ip = 1;
    config.connect_burst_per_ip = 2;
    let ws = p.run_bridge(config).await;
    drop(p.connect_when_ready(&p.ws, "probe").await);
    test_support::eventually(
        "the bridge takes sockets",
        Duration::from_secs(10),
        || async { (upgrade_as(&p, &ws, "198.51.100.9:4000").await == Some(101)).then_some(()) },
    )
    .await;
    // Every connection comes from the balancer's address; the limits count
    // the clients the headers name.
    assert_eq!(upgrade_as(&p, &ws, "198.51.100.9:4001").await, Some(101));
    assert_eq!(
        upgrade_as(&p, &ws, "198.51.100.9:4002").await,
        Some(429),
        "a third connect of one client within a second"
    );
    assert_eq!(upgrade_as(&p, &ws, "203.0.113.4:5000").await, Some(101));
    assert_eq!(upgrade_as(&p, &ws, "[2001:db8::4]:5000").await, Some(101));
    // A connection without the header is not served.
    let plain = tokio_tungstenite::connect_async(format!("{ws}?token={}", p.token("pax"))).await;
    assert!(plain.is_err(), "{plain:?}");
}

fn admin_token(p: &Platform, user: &str) -> String {
    p.issuer
        .mint(&DevToken {
            groups: vec!["admin".into()],
            ..DevToken::access(user)
        })
        .unwrap()
}

#[tokio::test]
async fn the_panel_publishes_as_its_admin_checked_by_notify_svc_and_rate_limited() {
    let p = Platform::start().await;
    let (ada, bea) = (admin_token(&p, "ada"), admin_token(&p, "bea"));
    let keyed = r#"{"user":"cy","data":{"n":1},"idempotency_key":"k1"}"#;
    // Each admin's key is their own: the same key from two admins is two
    // messages; from one admin twice, one.
    let duplicate =
        |answer: String| serde_json::from_str::<Value>(&answer).unwrap()["duplicate"].clone();
    for (token, want) in [(&ada, false), (&bea, false), (&ada, true)] {
        let (status, answer) = http(&p.ws, "POST", "/panel/api/publish", Some(token), keyed).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(duplicate(answer), want);
    }

    // notify-svc checks the admin itself: a relayed token of someone else
    // is refused there, whatever the relaying bridge may do.
    let mut api = p.api().await;
    let relayed = |token: &str| {
        let mut req = tonic::Request::new(to_user("cy", "1"));
        req.metadata_mut()
            .insert("x-notify-panel-admin", token.parse().unwrap());
        req
    };
    let not_admin = api.publish(relayed(&p.token("cy"))).await.unwrap_err();
    assert_eq!(
        not_admin.code(),
        tonic::Code::PermissionDenied,
        "{not_admin:?}"
    );
    let garbage = api.publish(relayed("garbage")).await.unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::Unauthenticated, "{garbage:?}");

    // A person at a form: a burst of 10, then 2 a second.
    let mut statuses = Vec::new();
    for n in 0..15 {
        let body = format!(r#"{{"user":"cy","data":{n}}}"#);
        statuses.push(
            http(&p.ws, "POST", "/panel/api/publish", Some(&bea), &body)
                .await
                .0,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 8,
        "{statuses:?}"
    );

    // Switched off (the default outside `notify up`): no page, no publish.
    let mut config = p.bridge_config("no-panel", SendBound::default());
    config.panel = false;
    let off = p.run_bridge(config).await;
    drop(p.connect_when_ready(&off, "probe").await);
    assert_eq!(http(&off, "GET", "/panel", None, "").await.0, 404);
    assert_eq!(
        http(&off, "POST", "/panel/api/publish", Some(&ada), keyed)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn a_publish_while_notify_svc_is_away_is_answered_unavailable_then_succeeds() {
    let mut p = Platform::start().await;
    let mut vic = p.connect("vic", "").await;
    assert_eq!(vic.next().await["type"], "welcome");
    // notify-svc goes away; the socket stays.
    p.stop_svc().await;
    until_links(&p.ops, 0).await;
    let publish =
        serde_json::json!({"action": "publish", "topic": "room:lobby", "data": 1, "id": "p"});
    vic.send(publish.clone()).await;
    let refused = vic.next().await;
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["code"].as_str(),
            refused["id"].as_str()
        ),
        (Some("error"), Some("unavailable"), Some("p")),
        "retry later is not a bad request: {refused}"
    );
    // Back: the same frame succeeds (once the bridge has relinked).
    p.restart_svc().await;
    let mut answer = Value::Null;
    for _ in 0..100 {
        vic.send(publish.clone()).await;
        answer = vic.next().await;
        if answer["type"] == "published" {
            break;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answer["type"], "published", "{answer}");
}
