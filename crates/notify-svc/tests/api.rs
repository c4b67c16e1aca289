//! The Notify API over real gRPC on loopback. Every test runs twice, on a
//! real Postgres and on the embedded SQLite store: a client must not be
//! able to tell them apart.

mod common;

use std::{collections::HashSet, time::Duration};

use common::{Backend, Svc, all_seqs, history_of_user, inbox_seqs, to_topic, to_user, to_users};
use notify_core::{NamespacePolicy, SubscribeRule};
use notify_proto::v1::{self as pb, history_request::Target as H, publish_request::Target as P};
use tokio_stream::StreamExt;
use tonic::Code;

on_both_stores!(
    a_user_publish_is_in_history_with_seq_1,
    user_lists_topics_and_broadcast_are_accepted,
    concurrent_publishers_get_every_seq_once,
    a_repeated_idempotency_key_stores_once,
    a_publish_the_database_refuses_fails_alone,
    every_bad_input_gets_its_status,
    a_topic_log_keeps_its_namespace_size,
    watch_streams_what_is_published_after_it_started,
    subscriptions_and_presence,
    history_pages_follow_next_since,
    history_pages_of_large_messages_stop_at_a_mebibyte,
    watch_sees_what_another_replica_commits,
    watch_broadcast_is_live_only,
    reflection_lists_the_services_like_grpcurl_list,
    a_fight_event_reaches_both_fighters_and_its_topics_once,
);

async fn a_user_publish_is_in_history_with_seq_1(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    let sent = client
        .publish(to_user("alice", r#"{"text":"hi"}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.seq, 1);
    assert!(!sent.duplicate);
    let page = client
        .history(history_of_user("alice", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    let m = &page.messages[0];
    assert_eq!(
        (m.seq, m.message_id.as_str()),
        (1, sent.message_id.as_str())
    );
    assert_eq!(
        (m.event.as_str(), m.data.as_str()),
        ("note", r#"{"text":"hi"}"#)
    );
    assert_eq!(m.user_id, "alice");
    assert!(m.ts_ms > 0);
    assert_eq!(
        (page.head_seq, page.has_more, page.next_since),
        (1, false, 1)
    );
    svc.stop().await;
}

async fn user_lists_topics_and_broadcast_are_accepted(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    client.publish(to_user("bob", "1")).await.unwrap();
    let list = client
        .publish(to_users(&["bob", "carol"], r#"{"x":1}"#))
        .await
        .unwrap()
        .into_inner();
    let seqs = inbox_seqs(&list);
    assert_eq!(seqs, [("bob".into(), 2), ("carol".into(), 1)]);
    let carol = client
        .history(history_of_user("carol", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(carol.messages.len(), 1);
    let m = &carol.messages[0];
    assert_eq!(
        (m.seq, m.data.as_str(), m.event.as_str()),
        (1, r#"{"x":1}"#, "note")
    );
    assert_eq!(m.message_id, list.message_id);

    for expected in 1..=3 {
        let t = client
            .publish(to_topic("fights:live", "{}"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.seq, expected);
    }
    assert_eq!(
        all_seqs(&mut client, H::Topic("fights:live".into())).await,
        [1, 2, 3]
    );

    let b = client
        .publish(pb::PublishRequest {
            target: Some(P::Broadcast(true)),
            ..to_user("", "{}")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.seq, b.duplicate), (0, false));
    assert!(!b.message_id.is_empty());
    svc.stop().await;
}

async fn concurrent_publishers_get_every_seq_once(backend: Backend) {
    const PUBLISHERS: usize = 64;
    const EACH: usize = 500;
    let svc = Svc::start_on(backend).await;
    for target in [P::UserId("hot".into()), P::Topic("room:hot".into())] {
        let mut tasks = Vec::new();
        for _ in 0..PUBLISHERS {
            let mut client = svc.client().await;
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let req = pb::PublishRequest {
                        target: Some(target.clone()),
                        ..to_user("", &i.to_string())
                    };
                    seqs.push(client.publish(req).await.expect("publish").into_inner().seq);
                }
                seqs
            }));
        }
        let mut seqs = Vec::new();
        for task in tasks {
            let mine = task.await.unwrap();
            // One caller's publishes commit in the order it made them.
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "per-caller order");
            seqs.extend(mine);
        }
        seqs.sort_unstable();
        let expected: Vec<u64> = (1..=(PUBLISHERS * EACH) as u64).collect();
        assert_eq!(seqs, expected, "answers for {target:?}: exactly 1..=32000");
    }
    let mut client = svc.client().await;
    let stored = all_seqs(&mut client, H::UserId("hot".into())).await;
    assert_eq!(stored, (1..=(PUBLISHERS * EACH) as u64).collect::<Vec<_>>());
    svc.stop().await;
}

async fn a_repeated_idempotency_key_stores_once(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    let keyed = |data: &str| pb::PublishRequest {
        idempotency_key: "order-7".into(),
        ..to_user("dora", data)
    };
    let first = client
        .publish(keyed(r#"{"n":1}"#))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .publish(keyed(r#"{"n":2}"#))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(
        (again.message_id, again.seq),
        (first.message_id.clone(), first.seq)
    );
    let page = client
        .history(history_of_user("dora", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].data, r#"{"n":1}"#);

    // Within one batch too, and per item.
    let batch = client
        .publish_batch(pb::PublishBatchRequest {
            requests: vec![
                pb::PublishRequest {
                    idempotency_key: "b-1".into(),
                    ..to_user("dora", "1")
                },
                pb::PublishRequest {
                    idempotency_key: "b-1".into(),
                    ..to_user("dora", "2")
                },
                to_user("dora", "not json"),
                keyed("3"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let ok = |i: usize| match &batch.results[i].result {
        Some(pb::publish_result::Result::Ok(r)) => r.clone(),
        other => panic!("item {i}: {other:?}"),
    };
    assert_eq!((ok(0).seq, ok(0).duplicate), (2, false));
    assert_eq!((ok(1).seq, ok(1).duplicate), (2, true));
    match &batch.results[2].result {
        Some(pb::publish_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert!(e.message.contains("JSON"), "{}", e.message);
        }
        other => panic!("item 2: {other:?}"),
    }
    assert_eq!(
        (ok(3).message_id, ok(3).duplicate),
        (first.message_id, true)
    );
    assert_eq!(
        all_seqs(&mut client, H::UserId("dora".into())).await,
        [1, 2]
    );
    svc.stop().await;
}

async fn every_bad_input_gets_its_status(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    let many: Vec<String> = (0..10_001).map(|i| format!("u{i}")).collect();
    let cases: Vec<(&str, pb::PublishRequest, Code, &str)> = vec![
        (
            "no target",
            pb::PublishRequest {
                target: None,
                ..to_user("", "{}")
            },
            Code::InvalidArgument,
            "no target",
        ),
        (
            "empty user",
            to_user("", "{}"),
            Code::InvalidArgument,
            "user_id is empty",
        ),
        (
            "empty users",
            pb::PublishRequest {
                target: Some(P::Users(pb::UserList::default())),
                ..to_user("", "{}")
            },
            Code::InvalidArgument,
            "users is empty",
        ),
        (
            "invalid json",
            to_user("a", "{nope"),
            Code::InvalidArgument,
            "not valid JSON",
        ),
        (
            "empty data",
            to_user("a", ""),
            Code::InvalidArgument,
            "not valid JSON",
        ),
        (
            "data too large",
            to_user("a", &format!("\"{}\"", "x".repeat(64 * 1024))),
            Code::InvalidArgument,
            "over the limit of 65536",
        ),
        (
            "10 MB data",
            to_user("a", &format!("\"{}\"", "x".repeat(10 * 1024 * 1024))),
            Code::InvalidArgument,
            "over the limit of 65536",
        ),
        (
            "too many users",
            pb::PublishRequest {
                target: Some(P::Users(pb::UserList { user_ids: many })),
                ..to_user("", "{}")
            },
            Code::InvalidArgument,
            "10001 users",
        ),
        (
            "topic without colon",
            to_topic("fights", "{}"),
            Code::InvalidArgument,
            "no ':'",
        ),
        (
            "upper-case namespace",
            to_topic("Fights:x", "{}"),
            Code::InvalidArgument,
            "[a-z0-9_-]",
        ),
        (
            "topic too long",
            to_topic(&format!("room:{}", "x".repeat(251)), "{}"),
            Code::InvalidArgument,
            "over the limit of 255",
        ),
        (
            "unknown namespace",
            to_topic("chat:1", "{}"),
            Code::InvalidArgument,
            "unknown namespace \"chat\"",
        ),
        (
            "empty event",
            pb::PublishRequest {
                event: String::new(),
                ..to_user("a", "{}")
            },
            Code::InvalidArgument,
            "event is empty",
        ),
        (
            "ttl over a month",
            pb::PublishRequest {
                ttl_seconds: 40 * 24 * 3600,
                ..to_user("a", "{}")
            },
            Code::InvalidArgument,
            "ttl_seconds",
        ),
        (
            "broadcast false",
            pb::PublishRequest {
                target: Some(P::Broadcast(false)),
                ..to_user("", "{}")
            },
            Code::InvalidArgument,
            "no target",
        ),
    ];
    for (name, req, code, needle) in cases {
        let status = client.publish(req).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{name}: {:?} lacks {needle:?}",
            status.message()
        );
    }
    // Over the gRPC size limit: refused before decoding. tonic answers
    // OUT_OF_RANGE here (the gRPC spec suggests RESOURCE_EXHAUSTED).
    let huge = to_user(
        "a",
        &format!("\"{}\"", "x".repeat(notify_svc::MAX_REQUEST_BYTES)),
    );
    let status = client.publish(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(status.message().contains("too large"), "{status:?}");
    let batch = pb::PublishBatchRequest {
        requests: vec![to_user("a", "1"); 1001],
    };
    let status = client.publish_batch(batch).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("1001 requests"));
    let status = client
        .emit_fight_event(pb::EmitFightEventRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("event is required"), "{status:?}");
    let status = client
        .history(pb::HistoryRequest {
            target: Some(H::Topic("nope".into())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .disconnect(pb::DisconnectRequest {
            target: Some(pb::disconnect_request::Target::ConnectionId(
                "not-a-uuid".into(),
            )),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // Nothing of the above was stored.
    assert!(
        all_seqs(&mut client, H::UserId("a".into()))
            .await
            .is_empty()
    );
    svc.stop().await;
}

async fn a_topic_log_keeps_its_namespace_size(backend: Backend) {
    let svc = Svc::start_on_with(backend, |cfg| {
        cfg.topics.set(
            "ticker",
            NamespacePolicy {
                subscribe: SubscribeRule::AnyUser,
                client_publish: false,
                log_max_len: 10,
                log_max_age: Duration::from_secs(3600),
            },
        );
    })
    .await;
    let mut client = svc.client().await;
    for i in 0..15 {
        client
            .publish(to_topic("ticker:btc", &i.to_string()))
            .await
            .unwrap();
    }
    // One batch larger than the log as well.
    let batch = pb::PublishBatchRequest {
        requests: vec![to_topic("ticker:btc", "\"b\""); 25],
    };
    client.publish_batch(batch).await.unwrap();
    let seqs = all_seqs(&mut client, H::Topic("ticker:btc".into())).await;
    assert_eq!(seqs, (31..=40).collect::<Vec<u64>>());
    svc.stop().await;
}

async fn watch_streams_what_is_published_after_it_started(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    client
        .publish(to_topic("fights:live", r#""before""#))
        .await
        .unwrap();
    let mut live = client
        .watch(pb::WatchRequest {
            target: Some(pb::watch_request::Target::Topic("fights:live".into())),
            since: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut replay = client
        .watch(pb::WatchRequest {
            target: Some(pb::watch_request::Target::UserId("erin".into())),
            since: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        client
            .publish(to_topic("fights:live", &i.to_string()))
            .await
            .unwrap();
        client
            .publish(to_user("erin", &i.to_string()))
            .await
            .unwrap();
    }
    for (stream, first_seq) in [(&mut live, 2), (&mut replay, 1)] {
        for i in 0..5u64 {
            let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("message within 10 s")
                .expect("stream open")
                .expect("no error");
            assert_eq!(
                (m.seq, m.data.as_str()),
                (first_seq + i, i.to_string().as_str())
            );
        }
    }
    // `since` replays stored messages first, then goes live without a seam.
    let mut resumed = client
        .watch(pb::WatchRequest {
            target: Some(pb::watch_request::Target::UserId("erin".into())),
            since: 3,
        })
        .await
        .unwrap()
        .into_inner();
    client.publish(to_user("erin", "5")).await.unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seqs.push(m.seq);
    }
    assert_eq!(seqs, [4, 5, 6]);
    drop((live, replay, resumed));
    svc.stop().await;
}

async fn subscriptions_and_presence(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    client.publish(to_topic("room:lobby", "{}")).await.unwrap();
    let sub = |user: &str| pb::SubscribeRequest {
        user_id: user.into(),
        topic: "room:lobby".into(),
    };
    let first = client.subscribe(sub("fay")).await.unwrap().into_inner();
    assert_eq!((first.created, first.topic_seq), (true, 1));
    assert!(
        !client
            .subscribe(sub("fay"))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    client.subscribe(sub("gus")).await.unwrap();
    let presence = |target| pb::GetPresenceRequest {
        target: Some(target),
    };
    let count = client
        .get_presence(presence(pb::get_presence_request::Target::Topic(
            "room:lobby".into(),
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.subscribers, 2);
    let gone = client
        .unsubscribe(pb::UnsubscribeRequest {
            user_id: "gus".into(),
            topic: "room:lobby".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.removed);
    let status = client
        .subscribe(pb::SubscribeRequest {
            user_id: "fay".into(),
            topic: "chat:x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // The registry is empty until bridges attach: presence is empty, a
    // disconnect reaches nobody, an unknown connection is NOT_FOUND.
    let conns = client
        .get_presence(presence(pb::get_presence_request::Target::UserId(
            "fay".into(),
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(conns.connections.is_empty());
    let d = client
        .disconnect(pb::DisconnectRequest {
            target: Some(pb::disconnect_request::Target::UserId("fay".into())),
            reason: "bye".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.disconnected, 0);
    let status = client
        .disconnect(pb::DisconnectRequest {
            target: Some(pb::disconnect_request::Target::ConnectionId(uuid_string())),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    svc.stop().await;
}

fn uuid_string() -> String {
    notify_core::ConnectionId::new().to_string()
}

async fn history_pages_follow_next_since(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    let batch = pb::PublishBatchRequest {
        requests: vec![to_user("hal", "1"); 250],
    };
    client.publish_batch(batch).await.unwrap();
    let page = client
        .history(history_of_user("hal", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            page.messages.len(),
            page.has_more,
            page.next_since,
            page.head_seq
        ),
        (100, true, 100, 250)
    );
    let page = client
        .history(history_of_user("hal", 200, 5000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (page.messages.len(), page.has_more, page.next_since),
        (50, false, 250)
    );
    let unique: HashSet<_> = page.messages.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(unique.len(), 50);
    svc.stop().await;
}

async fn history_pages_of_large_messages_stop_at_a_mebibyte(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    let big = format!("\"{}\"", "q".repeat(60 * 1000));
    let batch = pb::PublishBatchRequest {
        requests: vec![to_user("ida", &big); 40],
    };
    client.publish_batch(batch).await.unwrap();
    // 40 × 60 KB = 2.4 MB asked in one page: a client with gRPC's default
    // 4 MiB receive limit must still decode it, so it stops at 1 MiB.
    let mut since = 0;
    let mut pages = Vec::new();
    loop {
        let page = client
            .history(history_of_user("ida", since, 1000))
            .await
            .unwrap()
            .into_inner();
        let bytes: usize = page.messages.iter().map(|m| m.data.len()).sum();
        assert!(bytes <= 1024 * 1024, "a page of {bytes} bytes");
        pages.push(page.messages.len());
        since = page.next_since;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(since, 40, "every message, in pages");
    assert_eq!(pages.iter().sum::<usize>(), 40);
    assert!(pages.len() >= 3, "pages of {pages:?}");
    svc.stop().await;
}

async fn watch_sees_what_another_replica_commits(backend: Backend) {
    let a = Svc::start_on(backend).await;
    let b = Svc::replica(&a.url).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let mut watch = on_a
        .watch(pb::WatchRequest {
            target: Some(pb::watch_request::Target::Topic("room:both".into())),
            since: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // Interleave: B's messages reach A's watcher through the store.
    for i in 0..3 {
        on_b.publish(to_topic("room:both", &format!("{}", 2 * i)))
            .await
            .unwrap();
        on_a.publish(to_topic("room:both", &format!("{}", 2 * i + 1)))
            .await
            .unwrap();
    }
    on_b.publish(to_topic("room:both", "6")).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let m = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("within 10 s (catch-up runs every second)")
            .unwrap()
            .unwrap();
        seen.push((m.seq, m.data));
    }
    let expected: Vec<(u64, String)> = (1..=7).map(|s| (s, (s - 1).to_string())).collect();
    assert_eq!(seen, expected);
    drop(watch);
    b.stop().await;
    a.stop().await;
}

async fn watch_broadcast_is_live_only(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    let broadcast = |data: &str| pb::PublishRequest {
        target: Some(P::Broadcast(true)),
        ..to_user("", data)
    };
    client.publish(broadcast("\"before\"")).await.unwrap();
    let mut watch = client
        .watch(pb::WatchRequest {
            target: Some(pb::watch_request::Target::Broadcast(true)),
            since: 0,
        })
        .await
        .unwrap()
        .into_inner();
    client.publish(broadcast("\"live\"")).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a live broadcast within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.seq, m.data.as_str(), m.topic.as_str(), m.user_id.as_str()),
        (0, "\"live\"", "", "")
    );
    drop(watch);
    svc.stop().await;
}

async fn reflection_lists_the_services_like_grpcurl_list(backend: Backend) {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let svc = Svc::start_on(backend).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", svc.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["notify.v1.Notify", "grpc.health.v1.Health"] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    drop(answers);
    svc.stop().await;
}

fn accepted_fight(id: &str) -> pb::EmitFightEventRequest {
    pb::EmitFightEventRequest {
        event: Some(pb::FightEvent {
            kind: Some(pb::fight_event::Kind::Accepted(pb::FightAccepted {
                fight: Some(pb::Fight {
                    fight_id: id.into(),
                    creator_id: "cora".into(),
                    acceptor_id: "abe".into(),
                    stake: 500,
                    currency: "EUR".into(),
                    status: pb::FightStatus::Accepted as i32,
                    ..Default::default()
                }),
            })),
        }),
        idempotency_key: format!("fight-outbox:{id}"),
    }
}

async fn a_fight_event_reaches_both_fighters_and_its_topics_once(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    let mut client = svc.client().await;
    let answer = client
        .emit_fight_event(accepted_fight("f-7"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.published.len(),
        4,
        "two inboxes, fight:f-7, fights:live"
    );
    assert!(!answer.duplicate);
    for user in ["cora", "abe"] {
        let page = client
            .history(history_of_user(user, 0, 10))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.messages.len(), 1, "{user}");
        assert_eq!(page.messages[0].event, "fight_accepted");
        let data: serde_json::Value = serde_json::from_str(&page.messages[0].data).unwrap();
        assert_eq!(data["fight"]["fight_id"], "f-7");
        assert_eq!(data["fight"]["status"], "accepted");
    }
    for topic in ["fight:f-7", "fights:live"] {
        assert_eq!(
            all_seqs(&mut client, H::Topic(topic.into())).await,
            [1],
            "{topic}"
        );
    }

    // The tracker retries after a lost answer: nothing is stored twice.
    let again = client
        .emit_fight_event(accepted_fight("f-7"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    let ids = |r: &pb::EmitFightEventResponse| {
        r.published
            .iter()
            .map(|p| p.message_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&again), ids(&answer));
    assert_eq!(
        all_seqs(&mut client, H::Topic("fights:live".into())).await,
        [1]
    );

    // A bad event names what is wrong and stores nothing.
    let mut bad = accepted_fight("f-8");
    if let Some(pb::fight_event::Kind::Accepted(a)) =
        bad.event.as_mut().and_then(|e| e.kind.as_mut())
    {
        a.fight.as_mut().unwrap().acceptor_id.clear();
    }
    let status = client.emit_fight_event(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("acceptor_id"), "{status:?}");
    // An enum number the proto does not define: refused, not guessed.
    let mut unknown = accepted_fight("f-8");
    if let Some(pb::fight_event::Kind::Accepted(a)) =
        unknown.event.as_mut().and_then(|e| e.kind.as_mut())
    {
        a.fight.as_mut().unwrap().status = 99;
    }
    let status = client.emit_fight_event(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("status"), "{status:?}");
    assert!(
        all_seqs(&mut client, H::Topic("fight:f-8".into()))
            .await
            .is_empty()
    );
    svc.stop().await;
}

#[tokio::test]
async fn watch_streams_are_capped_per_caller() {
    let svc = Svc::start_with(test_support::TestDb::create().await, |cfg| {
        cfg.max_watches_per_caller = 3;
    })
    .await;
    let mut client = svc.client().await;
    let watch = |user: &str| pb::WatchRequest {
        target: Some(pb::watch_request::Target::UserId(user.into())),
        ..Default::default()
    };
    let mut open = Vec::new();
    for user in ["a", "b", "c"] {
        open.push(client.watch(watch(user)).await.expect("within the cap"));
    }
    let refused = client.watch(watch("d")).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("3 Watch streams"),
        "{}",
        refused.message()
    );
    // A stream the caller drops gives its slot back.
    open.pop();
    test_support::eventually(
        "the slot comes back",
        std::time::Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move { client.watch(watch("d")).await.ok().map(drop) }
        },
    )
    .await;
}

/// Makes the database itself refuse any inbox row for user `poison`.
async fn poison_inbox_rows(svc: &Svc, backend: Backend) {
    match backend {
        Backend::Postgres => {
            let (db, connection) = tokio_postgres::connect(&svc.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            db.batch_execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS
                     $$ BEGIN RAISE EXCEPTION 'poisoned row'; END $$;
                 CREATE TRIGGER refuse_poison BEFORE INSERT ON inbox FOR EACH ROW
                     WHEN (NEW.user_id = 'poison') EXECUTE FUNCTION refuse_poison();",
            )
            .await
            .unwrap();
        }
        Backend::Sqlite => {
            let path = svc.url.trim_start_matches("sqlite:");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON inbox
                         WHEN NEW.user_id = 'poison'
                         BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;",
                )
                .unwrap();
        }
    }
}

async fn a_publish_the_database_refuses_fails_alone(backend: Backend) {
    let svc = Svc::start_on(backend).await;
    poison_inbox_rows(&svc, backend).await;
    let client = svc.client().await;
    // Rounds of 64 callers at once, group commit batching them together;
    // one in each round is refused by the database.
    for round in 0..5 {
        let calls: Vec<_> = (0..64)
            .map(|i| {
                let mut client = client.clone();
                let user = if i == 31 {
                    "poison".to_owned()
                } else {
                    format!("u{round}-{i}")
                };
                tokio::spawn(async move { client.publish(to_user(&user, "1")).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let result = call.await.unwrap();
            match (i, result) {
                (31, Ok(_)) => panic!("the database refused the poisoned row"),
                (31, Err(e)) => assert_eq!(e.code(), Code::Internal, "{e:?}"),
                (_, Err(e)) => {
                    panic!("round {round}: caller {i} failed with the poisoned one: {e:?}")
                }
                (_, Ok(_)) => {}
            }
        }
    }
    svc.stop().await;
}
