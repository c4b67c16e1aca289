//! The store conformance suite: every test body runs against both backends,
//! Postgres and SQLite, each on a fresh database of its own. A behaviour
//! that differs between the two is a bug in one of them.
//!
//! Covered: migrations (racing runners, changed files), group commits from
//! two replicas (gap-free seqs, idempotency keys stored once), retention,
//! acks, positions, subscriptions, the connection registry, and the fights
//! outbox with BetTracker's lease and cursor.

use std::{sync::Arc, time::Duration};

use notify_core::{
    ConnectionId, MessageId, NamespacePolicy, SubscribeRule, Target, Topic, TopicPolicy, UserId,
};
use notify_store::{
    ConnectionEvent, Feed, Lifecycle, PublishItem, Store, StoreError, fights::NewFight,
};
use test_support::TestDb;

mod common;

use common::{Backend, Sql, item, user};

conformance!(
    migrations_apply_once_even_when_runners_race,
    two_replicas_committing_overlapping_batches_keep_seqs_gap_free,
    the_sweeper_drops_expired_messages_and_old_topic_entries,
    expired_idempotency_keys_are_taken_over,
    racing_replicas_store_each_idempotency_key_once,
    acks_are_cumulative_and_bounded_by_the_head,
    positions_of_many_feeds_come_back_in_the_order_asked,
    positions_tell_the_oldest_kept_seq_and_the_subscriptions,
    mixed_batches_on_advanced_heads_number_trim_and_answer_keys_right,
    subscriptions_are_sets_per_user,
    the_registry_takes_and_drops_connections_in_batches,
    lifecycle_events_heard_by_two_replicas_are_recorded_once_gap_free_in_order,
    a_bridge_hello_closes_the_rows_it_no_longer_lists,
    a_bridge_no_replica_has_seen_loses_its_connections_with_a_disconnect_each,
    the_lifecycle_sweep_drops_old_events_and_a_reader_learns_it_missed_them,
    the_publish_outbox_numbers_exactly_the_committed_rows_gap_free,
    history_pages_through_a_feed_and_hides_expired_entries,
    every_fight_change_lands_in_the_outbox_with_gap_free_ids,
    one_relay_holds_the_lease_and_only_it_moves_the_cursor,
    open_fights_past_their_deadline_are_overdue_until_recorded,
);

async fn migrations_apply_once_even_when_runners_race(db: Backend) {
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let s = db.store();
            tokio::spawn(async move { s.migrate().await })
        })
        .collect();
    let mut applied = 0;
    for r in runners {
        applied += r.await.unwrap().expect("every runner succeeds");
    }
    assert_eq!(applied, db.migrations());
    assert_eq!(db.store().migrate().await.unwrap(), 0);

    db.sql(Sql::both(
        "UPDATE schema_migrations SET checksum = checksum + 1 WHERE version = 1",
    ))
    .await;
    match db.store().migrate().await {
        Err(StoreError::MigrationChanged { version: 1, .. }) => {}
        other => panic!("expected MigrationChanged, got {other:?}"),
    }
}

async fn two_replicas_committing_overlapping_batches_keep_seqs_gap_free(db: Backend) {
    let replicas = [db.migrated().await, db.store()];
    let users: Vec<UserId> = (0..5).map(|i| user(&format!("u{i}"))).collect();
    let topic = Topic::parse("room:shared").unwrap();
    let mut tasks = Vec::new();
    for worker in 0..8usize {
        let store = replicas[worker % 2].clone();
        let (users, topic) = (users.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..40usize {
                // Each batch touches users in a different order, plus lists and the topic:
                // lock order must not depend on batch order.
                let mut batch: Vec<PublishItem> = (0..users.len())
                    .map(|k| {
                        item(Target::User(
                            users[(k * (worker + 1) + round) % users.len()].clone(),
                        ))
                    })
                    .collect();
                batch.push(item(Target::Users(users.iter().rev().cloned().collect())));
                batch.push(item(Target::Topic(topic.clone())));
                store.commit(&batch).await.expect("commit");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let reader = &replicas[1];
    for u in &users {
        let page = reader
            .history(&Feed::Inbox(u.clone()), 0, 10_000)
            .await
            .unwrap();
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        // 8 workers × 40 rounds × (1 direct + 1 list) per user.
        assert_eq!(seqs, (1..=640).collect::<Vec<_>>(), "{u}");
        assert_eq!(page.head_seq, 640);
    }
    let page = reader
        .history(&Feed::Topic(topic), 0, 10_000)
        .await
        .unwrap();
    // 320 published; the log keeps the newest 100.
    assert_eq!(page.head_seq, 320);
    assert_eq!(page.messages.first().map(|m| m.seq), Some(221));
    assert_eq!(page.messages.len(), 100);
}

async fn the_sweeper_drops_expired_messages_and_old_topic_entries(db: Backend) {
    let s = db.migrated().await;
    let topic = Topic::parse("ticker:x").unwrap();
    // ann gets 1, 2 inline, 3 from a user list (payload in messages), 4 inline.
    let mut batch: Vec<PublishItem> = vec![
        item(Target::User(user("ann"))),
        item(Target::User(user("ann"))),
        item(Target::Users(vec![user("ann"), user("bea")])),
        item(Target::User(user("ann"))),
    ];
    batch.extend((0..3).map(|_| item(Target::Topic(topic.clone()))));
    s.commit(&batch).await.unwrap();
    // Age ann's first three entries (and so the list's payload and bea's
    // entry) past their TTL, and one topic entry past two hours.
    db.sql(Sql {
        postgres: "UPDATE messages SET expires_at = now() - interval '1 second';
                   UPDATE inbox SET expires_at = now() - interval '1 second'
                     WHERE seq <= 3 OR user_id = 'bea';
                   UPDATE topic_log SET created_at = now() - interval '2 hours' WHERE seq = 1;",
        // (The largest seq is the inbox head's row, which never expires.)
        sqlite: "UPDATE messages SET expires_at = 0;
                 UPDATE inbox SET expires_at = 0
                   WHERE seq <= 3 OR (user_id = 'bea' AND seq < 9223372036854775807);
                 UPDATE topic_log SET created_at = 0 WHERE seq = 1;",
    })
    .await;
    let mut policy = TopicPolicy::empty();
    policy.set(
        "ticker",
        NamespacePolicy {
            subscribe: SubscribeRule::AnyUser,
            client_publish: false,
            log_max_len: 100,
            log_max_age: Duration::from_secs(3600),
        },
    );
    let swept = s.sweep(&policy).await.unwrap();
    assert_eq!((swept.inbox, swept.messages, swept.topic_log), (4, 1, 1));
    let inbox = s.history(&Feed::Inbox(user("ann")), 0, 100).await.unwrap();
    assert_eq!(
        inbox.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [4]
    );
    let bea = s.history(&Feed::Inbox(user("bea")), 0, 100).await.unwrap();
    assert!(bea.messages.is_empty());
    let log = s.history(&Feed::Topic(topic), 0, 100).await.unwrap();
    assert_eq!(
        log.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [2, 3]
    );
    // Heads are kept: new messages continue the numbering.
    let more = s.commit(&[item(Target::User(user("ann")))]).await.unwrap();
    assert_eq!(more[0].seq, 5);
}

async fn expired_idempotency_keys_are_taken_over(db: Backend) {
    let s = db.migrated().await;
    let keyed = || {
        let mut i = item(Target::User(user("bo")));
        i.publish.idempotency_key = Some("k".into());
        i
    };
    let first = s.commit(&[keyed()]).await.unwrap();
    let again = s.commit(&[keyed()]).await.unwrap();
    assert!(again[0].duplicate);
    assert_eq!(
        (again[0].message_id, again[0].seq),
        (first[0].message_id, 1)
    );
    db.sql(Sql {
        postgres: "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'",
        sqlite: "UPDATE idempotency_keys SET expires_at = 0",
    })
    .await;
    let after = s.commit(&[keyed()]).await.unwrap();
    assert!(!after[0].duplicate);
    assert_eq!(after[0].seq, 2);
    let swept = s.sweep(&TopicPolicy::empty()).await.unwrap();
    assert_eq!(
        swept.idempotency_keys, 0,
        "the taken-over key is live again"
    );
}

async fn racing_replicas_store_each_idempotency_key_once(db: Backend) {
    let replicas = [db.migrated().await, db.store()];
    let mut tasks = Vec::new();
    for worker in 0..8usize {
        let store = replicas[worker % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for round in 0..5usize {
                // Every worker publishes the same 20 keys, in its own order,
                // mixed with one unkeyed message per batch.
                let mut batch: Vec<PublishItem> = (0..20usize)
                    .map(|k| {
                        let key = (k * (worker + 3) + round) % 20;
                        let mut i = item(Target::User(user(&format!("r{}", key % 4))));
                        i.publish.idempotency_key = Some(format!("key-{key}"));
                        i
                    })
                    .collect();
                batch.push(item(Target::User(user("r0"))));
                let done = store.commit(&batch).await.expect("commit");
                for (i, c) in batch.iter().zip(done) {
                    if let Some(k) = &i.publish.idempotency_key {
                        answers.push((k.clone(), c.message_id, c.seq, c.duplicate));
                    }
                }
            }
            answers
        }));
    }
    let mut by_key: std::collections::HashMap<String, Vec<(MessageId, u64, bool)>> =
        Default::default();
    for t in tasks {
        for (k, id, seq, dup) in t.await.unwrap() {
            by_key.entry(k).or_default().push((id, seq, dup));
        }
    }
    assert_eq!(by_key.len(), 20);
    for (key, answers) in &by_key {
        assert_eq!(
            answers.iter().filter(|a| !a.2).count(),
            1,
            "{key}: exactly one original"
        );
        let (id, seq, _) = answers[0];
        assert!(
            answers.iter().all(|a| (a.0, a.1) == (id, seq)),
            "{key}: every answer names the original"
        );
    }
    // 20 keyed originals + 40 unkeyed messages, gap-free per user.
    let mut total = 0;
    for u in 0..4 {
        let page = replicas[1]
            .history(&Feed::Inbox(user(&format!("r{u}"))), 0, 1000)
            .await
            .unwrap();
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        total += seqs.len();
    }
    assert_eq!(total, 20 + 40);
}

async fn acks_are_cumulative_and_bounded_by_the_head(db: Backend) {
    let s = db.migrated().await;
    let batch: Vec<PublishItem> = (0..10).map(|_| item(Target::User(user("cy")))).collect();
    s.commit(&batch).await.unwrap();
    assert_eq!(s.inbox_position(&user("cy")).await.unwrap(), (0, 10));
    // Several acks for one user in a batch: the highest counts.
    s.ack(&[(user("cy"), 4), (user("cy"), 6), (user("cy"), 5)])
        .await
        .unwrap();
    assert_eq!(s.inbox_position(&user("cy")).await.unwrap(), (6, 10));
    // Never backwards, never past the head, nothing for users without messages.
    s.ack(&[(user("cy"), 3)]).await.unwrap();
    assert_eq!(s.inbox_position(&user("cy")).await.unwrap(), (6, 10));
    s.ack(&[(user("cy"), 99), (user("nobody"), 5)])
        .await
        .unwrap();
    assert_eq!(s.inbox_position(&user("cy")).await.unwrap(), (10, 10));
    assert_eq!(s.inbox_position(&user("nobody")).await.unwrap(), (0, 0));
}

async fn positions_of_many_feeds_come_back_in_the_order_asked(db: Backend) {
    let s = db.migrated().await;
    let news = Topic::parse("room:news").unwrap();
    let mut batch: Vec<PublishItem> = (0..3).map(|_| item(Target::User(user("dee")))).collect();
    batch.extend((0..5).map(|_| item(Target::Topic(news.clone()))));
    batch.push(item(Target::User(user("eve"))));
    s.commit(&batch).await.unwrap();
    s.ack(&[(user("dee"), 2)]).await.unwrap();

    let feeds = [
        Feed::Topic(news.clone()),
        Feed::Inbox(user("eve")),
        Feed::Inbox(user("nobody")),
        Feed::Inbox(user("dee")),
        Feed::Topic(Topic::parse("room:quiet").unwrap()),
        Feed::Inbox(user("dee")),
    ];
    let got: Vec<(u64, u64)> = s
        .positions(&feeds)
        .await
        .unwrap()
        .iter()
        .map(|p| (p.head_seq, p.acked_seq))
        .collect();
    assert_eq!(got, [(5, 0), (1, 0), (0, 0), (3, 2), (0, 0), (3, 2)]);
    assert!(s.positions(&[]).await.unwrap().is_empty());
}

/// Batches after the first start from heads that already moved: every seq,
/// every trim of a short topic log and every repeated key's answer must count
/// from where the head stood, with users, user lists, topics and keys mixed.
async fn mixed_batches_on_advanced_heads_number_trim_and_answer_keys_right(db: Backend) {
    let s = db.migrated().await;
    let short = Topic::parse("room:short").unwrap();
    let on_short = || {
        let mut i = item(Target::Topic(short.clone()));
        i.log_max_len = 3;
        i
    };
    let keyed = |mut i: PublishItem, key: &str| {
        i.publish.idempotency_key = Some(key.into());
        i
    };
    // Batch 1: ann 1..=2, the log 1..=2, a list to ann and bo.
    let first = s
        .commit(&[
            item(Target::User(user("ann"))),
            on_short(),
            keyed(item(Target::User(user("ann"))), "ann-2"),
            keyed(on_short(), "short-2"),
            item(Target::Users(vec![user("ann"), user("bo")])),
        ])
        .await
        .unwrap();
    let seqs: Vec<u64> = first.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [1, 1, 2, 2, 0]);
    // Batch 2: ann 4..=5 (the list took 3), the log 3..=5 pushes 1..=2 out,
    // and the keys of batch 1 come back with batch 1's answers.
    let second = s
        .commit(&[
            on_short(),
            keyed(item(Target::User(user("ann"))), "ann-2"),
            item(Target::User(user("ann"))),
            keyed(on_short(), "short-2"),
            on_short(),
            keyed(item(Target::User(user("ann"))), "ann-5"),
            keyed(on_short(), "short-5"),
        ])
        .await
        .unwrap();
    let answers: Vec<(u64, bool)> = second.iter().map(|c| (c.seq, c.duplicate)).collect();
    assert_eq!(
        answers,
        [
            (3, false),
            (2, true),
            (4, false),
            (2, true),
            (4, false),
            (5, false),
            (5, false)
        ]
    );
    assert_eq!(second[1].message_id, first[2].message_id);
    // The keys of batch 2 answer batch 2's seqs when repeated alone.
    let again = s
        .commit(&[
            keyed(on_short(), "short-5"),
            keyed(item(Target::User(user("ann"))), "ann-5"),
        ])
        .await
        .unwrap();
    assert_eq!((again[0].seq, again[1].seq), (5, 5));
    assert!(again.iter().all(|c| c.duplicate));
    let log = s
        .history(&Feed::Topic(short.clone()), 0, 100)
        .await
        .unwrap();
    let kept: Vec<u64> = log.messages.iter().map(|m| m.seq).collect();
    assert_eq!((kept, log.head_seq), (vec![3, 4, 5], 5));
    let inbox = s.history(&Feed::Inbox(user("ann")), 0, 100).await.unwrap();
    let seqs: Vec<u64> = inbox.messages.iter().map(|m| m.seq).collect();
    assert_eq!((seqs, inbox.head_seq), (vec![1, 2, 3, 4, 5], 5));
    let bo = s.history(&Feed::Inbox(user("bo")), 0, 100).await.unwrap();
    assert_eq!(bo.messages.len(), 1);
    // Batch 3: one more on the log pushes 3 out; an existing row is trimmed by
    // a later batch, not by the one that wrote it.
    s.commit(&[on_short()]).await.unwrap();
    let log = s.history(&Feed::Topic(short), 0, 100).await.unwrap();
    let kept: Vec<u64> = log.messages.iter().map(|m| m.seq).collect();
    assert_eq!(kept, [4, 5, 6]);
}

async fn positions_tell_the_oldest_kept_seq_and_the_subscriptions(db: Backend) {
    let s = db.migrated().await;
    let short = Topic::parse("room:short").unwrap();
    // A log of 3: of 5 messages, 3..=5 are kept.
    let mut batch: Vec<PublishItem> = (0..5)
        .map(|_| {
            let mut i = item(Target::Topic(short.clone()));
            i.log_max_len = 3;
            i
        })
        .collect();
    // An inbox whose first two messages expired already.
    for _ in 0..2 {
        let mut gone = item(Target::User(user("flo")));
        gone.publish.ttl = Duration::ZERO;
        batch.push(gone);
    }
    batch.extend((0..2).map(|_| item(Target::User(user("flo")))));
    s.commit(&batch).await.unwrap();
    for topic in ["room:b", "room:a"] {
        s.subscribe(&user("flo"), &Topic::parse(topic).unwrap())
            .await
            .unwrap();
    }
    let feeds = [
        Feed::Topic(short),
        Feed::Inbox(user("flo")),
        Feed::Inbox(user("nobody")),
        Feed::Topic(Topic::parse("room:quiet").unwrap()),
    ];
    let got = s.positions(&feeds).await.unwrap();
    let firsts: Vec<(u64, u64)> = got.iter().map(|p| (p.head_seq, p.first_seq)).collect();
    assert_eq!(firsts, [(5, 3), (4, 3), (0, 0), (0, 0)]);
    let subscriptions: Vec<&str> = got[1].subscriptions.iter().map(Topic::as_str).collect();
    assert_eq!(subscriptions, ["room:a", "room:b"]);
    assert!(got[0].subscriptions.is_empty() && got[2].subscriptions.is_empty());
}

async fn the_registry_takes_and_drops_connections_in_batches(db: Backend) {
    let s = db.migrated().await;
    let now = std::time::SystemTime::now();
    let record = |name: &str, bridge: &str| notify_store::ConnectionRecord {
        connection_id: notify_core::ConnectionId::new(),
        user_id: user(name),
        bridge_id: bridge.into(),
        connected_at: now,
        last_seen: now,
    };
    let records = [
        record("fay", "b1"),
        record("fay", "b2"),
        record("gus", "b1"),
    ];
    s.register_connections(&records).await.unwrap();
    // Registering again refreshes instead of failing.
    s.register_connections(&records[..1]).await.unwrap();
    assert_eq!(s.connections_of(&user("fay")).await.unwrap().len(), 2);

    let gone = [records[0].connection_id, notify_core::ConnectionId::new()];
    assert_eq!(s.remove_connections(&gone).await.unwrap(), 1);
    let left = s.connections_of(&user("fay")).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].bridge_id, "b2");
    assert_eq!(s.replace_bridge("b1", &[]).await.unwrap(), 1);
    assert!(s.connections_of(&user("gus")).await.unwrap().is_empty());
    assert_eq!(s.remove_connections(&[]).await.unwrap(), 0);
}

fn lifecycle(id: ConnectionId, name: &str, what: Lifecycle) -> ConnectionEvent {
    ConnectionEvent {
        connection_id: id,
        user_id: user(name),
        bridge_id: "b1".into(),
        at: std::time::SystemTime::now(),
        what,
    }
}

fn registered(name: &str, bridge: &str) -> notify_store::ConnectionRecord {
    let now = std::time::SystemTime::now();
    notify_store::ConnectionRecord {
        connection_id: ConnectionId::new(),
        user_id: user(name),
        bridge_id: bridge.into(),
        connected_at: now,
        last_seen: now,
    }
}

async fn ids_of(s: &dyn Store, name: &str) -> Vec<ConnectionId> {
    let records = s.connections_of(&user(name)).await.unwrap();
    records.into_iter().map(|r| r.connection_id).collect()
}

/// Every event of the log, as (position, connection, kind, topic, code, reason).
async fn log_of(s: &dyn Store) -> Vec<(u64, ConnectionId, i16, String, u16, String)> {
    let page = s.lifecycle_after(0, 10_000).await.unwrap();
    page.events
        .into_iter()
        .map(|r| {
            let (code, reason) = r.event.what.close();
            let (code, reason) = (code, reason.to_owned());
            (
                r.position,
                r.event.connection_id,
                r.event.what.kind(),
                r.event.what.topic().to_owned(),
                code,
                reason,
            )
        })
        .collect()
}

async fn lifecycle_events_heard_by_two_replicas_are_recorded_once_gap_free_in_order(db: Backend) {
    db.migrated().await;
    let (a, b) = (db.store(), db.store());
    // 40 connections, each connected, subscribed, unsubscribed, closed; both
    // replicas record every event, in batches cut at different places.
    let mut events = Vec::new();
    let ids: Vec<ConnectionId> = (0..40).map(|_| ConnectionId::new()).collect();
    for (n, id) in ids.iter().enumerate() {
        let topic = || format!("room:r{n}");
        let change = 2 * n as u64 + 1;
        events.push(lifecycle(*id, "ann", Lifecycle::Connected));
        events.push(lifecycle(
            *id,
            "ann",
            Lifecycle::Subscribed {
                topic: topic(),
                change,
            },
        ));
        events.push(lifecycle(
            *id,
            "ann",
            Lifecycle::Unsubscribed {
                topic: topic(),
                change: change + 1,
            },
        ));
        events.push(lifecycle(
            *id,
            "ann",
            Lifecycle::Disconnected {
                close_code: 1000,
                reason: "bye".into(),
            },
        ));
    }
    let replay = |s: Arc<dyn Store>, events: Vec<ConnectionEvent>, size: usize| {
        tokio::spawn(async move {
            for batch in events.chunks(size) {
                s.record_lifecycle(batch).await.unwrap();
            }
        })
    };
    let (ra, rb) = (
        replay(a.clone(), events.clone(), 7),
        replay(b.clone(), events.clone(), 13),
    );
    ra.await.unwrap();
    rb.await.unwrap();
    // A copy heard again later (a Hello re-listing a connection) is dropped.
    a.record_lifecycle(&events[..2]).await.unwrap();

    let log = log_of(a.as_ref()).await;
    let positions: Vec<u64> = log.iter().map(|e| e.0).collect();
    assert_eq!(
        positions,
        (1..=160).collect::<Vec<_>>(),
        "gap-free, once each"
    );
    for id in &ids {
        let mine: Vec<(i16, &str)> = log
            .iter()
            .filter(|e| e.1 == *id)
            .map(|e| (e.2, e.5.as_str()))
            .collect();
        assert_eq!(mine, [(1, ""), (3, ""), (4, ""), (2, "bye")], "in order");
    }
    let page = b.lifecycle_after(150, 4).await.unwrap();
    let got: Vec<u64> = page.events.iter().map(|e| e.position).collect();
    assert_eq!(
        (got, page.head, page.oldest),
        (vec![151, 152, 153, 154], 160, 1)
    );
}

async fn a_bridge_hello_closes_the_rows_it_no_longer_lists(db: Backend) {
    let s = db.migrated().await;
    let (kept, closed, other) = (
        registered("ann", "b1"),
        registered("bob", "b1"),
        registered("cy", "b2"),
    );
    s.register_connections(&[kept.clone(), closed.clone(), other.clone()])
        .await
        .unwrap();
    let gone = s.replace_bridge("b1", &[kept.connection_id]).await.unwrap();
    assert_eq!(gone, 1);
    assert_eq!(ids_of(s.as_ref(), "ann").await, [kept.connection_id]);
    assert!(ids_of(s.as_ref(), "bob").await.is_empty());
    assert_eq!(ids_of(s.as_ref(), "cy").await, [other.connection_id]);
    let log = log_of(s.as_ref()).await;
    assert_eq!(
        log,
        [(
            1,
            closed.connection_id,
            2,
            String::new(),
            1006,
            "closed_unheard".into()
        )]
    );
}

async fn a_bridge_no_replica_has_seen_loses_its_connections_with_a_disconnect_each(db: Backend) {
    db.migrated().await;
    let (a, b) = (db.store(), db.store());
    a.bridges_seen(&["lost".into(), "alive".into()])
        .await
        .unwrap();
    let (l1, l2, kept) = (
        registered("ann", "lost"),
        registered("bob", "lost"),
        registered("ann", "alive"),
    );
    a.register_connections(&[l1.clone(), l2.clone(), kept.clone()])
        .await
        .unwrap();
    // Nothing is older than a minute.
    assert_eq!(a.expire_bridges(Duration::from_secs(60)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.bridges_seen(&["alive".into()]).await.unwrap();
    // Two replicas expire at once: each connection goes once.
    let (ea, eb) = tokio::join!(
        a.expire_bridges(Duration::from_millis(200)),
        b.expire_bridges(Duration::from_millis(200)),
    );
    assert_eq!(ea.unwrap() + eb.unwrap(), 2);
    assert_eq!(ids_of(a.as_ref(), "ann").await, [kept.connection_id]);
    assert!(ids_of(a.as_ref(), "bob").await.is_empty());
    let mut log: Vec<(String, i16, u16, String)> = log_of(a.as_ref())
        .await
        .into_iter()
        .map(|e| (e.1.to_string(), e.2, e.4, e.5))
        .collect();
    log.sort();
    let mut want = vec![
        (
            l1.connection_id.to_string(),
            2,
            1006,
            "bridge_lost".to_owned(),
        ),
        (
            l2.connection_id.to_string(),
            2,
            1006,
            "bridge_lost".to_owned(),
        ),
    ];
    want.sort();
    assert_eq!(log, want);
    // A later report of the real close is the same event: dropped.
    let late = ConnectionEvent {
        bridge_id: "lost".into(),
        ..lifecycle(
            l1.connection_id,
            "ann",
            Lifecycle::Disconnected {
                close_code: 1000,
                reason: String::new(),
            },
        )
    };
    b.record_lifecycle(&[late]).await.unwrap();
    assert_eq!(log_of(a.as_ref()).await.len(), 2);
}

async fn the_lifecycle_sweep_drops_old_events_and_a_reader_learns_it_missed_them(db: Backend) {
    let s = db.migrated().await;
    let first: Vec<ConnectionEvent> = (0..3)
        .map(|_| lifecycle(ConnectionId::new(), "ann", Lifecycle::Connected))
        .collect();
    s.record_lifecycle(&first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = [lifecycle(ConnectionId::new(), "ann", Lifecycle::Connected)];
    s.record_lifecycle(&later).await.unwrap();
    assert_eq!(s.sweep_lifecycle(Duration::from_secs(60)).await.unwrap(), 0);
    assert_eq!(
        s.sweep_lifecycle(Duration::from_millis(200)).await.unwrap(),
        3
    );
    let page = s.lifecycle_after(1, 10).await.unwrap();
    assert_eq!((page.oldest, page.head, page.events.len()), (4, 4, 1));
    assert!(page.missed_after(1), "2 and 3 are gone");
    assert!(!page.missed_after(3));
}

/// Services write `notify_outbox` in their own transactions: 8 writers at
/// once, every fifth transaction rolled back; the rows left are exactly the
/// committed ones, numbered 1..=n with no gap.
async fn the_publish_outbox_numbers_exactly_the_committed_rows_gap_free(db: Backend) {
    db.migrated().await;
    let publish = |n: u32| format!(r#"{{"user_id":"u{n}","event":"e","data":{n}}}"#);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8u32 {
        let (db_sql, publish) = (db.connect_raw(), publish);
        writers.spawn(async move {
            let conn = db_sql.await;
            let mut committed = Vec::new();
            for i in 0..25u32 {
                let n = w * 100 + i;
                let insert = format!(
                    "INSERT INTO notify_outbox (publish) VALUES ('{}')",
                    publish(n)
                );
                let end = if n % 5 == 0 { "ROLLBACK" } else { "COMMIT" };
                conn.run(&format!("BEGIN; {insert}; {end};")).await;
                if end == "COMMIT" {
                    committed.push(i64::from(n));
                }
            }
            committed
        });
    }
    let mut committed = Vec::new();
    while let Some(w) = writers.join_next().await {
        committed.extend(w.unwrap());
    }
    committed.sort();
    let rows = db.connect_raw().await.ids_and_data().await;
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        ids,
        (1..=committed.len() as i64).collect::<Vec<_>>(),
        "gap-free"
    );
    let mut data: Vec<i64> = rows.iter().map(|r| r.1).collect();
    data.sort();
    assert_eq!(data, committed, "exactly the committed rows");

    // The relay's view: the same rows, paged after a cursor, and the lag.
    let outbox = db.database().publish_outbox().unwrap();
    let page = outbox.changes(3, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![4, 5, 6, 7, 8]
    );
    let json: serde_json::Value = serde_json::from_str(&page[0].publish).unwrap();
    assert_eq!(json["event"], "e", "the row's publish as written");
    let n = committed.len() as i64;
    let (behind, age) = outbox.lag(n - 2).await.unwrap();
    assert_eq!(behind, 2);
    assert!(
        (0.0..60.0).contains(&age),
        "age of the oldest unread: {age}"
    );
    assert_eq!(outbox.lag(n).await.unwrap(), (0, 0.0));

    // Relayed rows are pruned by age; rows past the cursor never are.
    assert_eq!(
        outbox
            .prune(n - 2, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        outbox.prune(n - 2, Duration::ZERO).await.unwrap(),
        (n - 2) as u64
    );
    let left: Vec<i64> = outbox
        .changes(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![n - 1, n]);
    assert_eq!(
        outbox.lag(n - 2).await.unwrap().0,
        2,
        "the head row keeps the count"
    );
}

/// A raw connection to a backend's database, outside the store.
enum Raw {
    Postgres(tokio_postgres::Client),
    Sqlite(std::path::PathBuf),
}

impl Raw {
    async fn run(&self, sql: &str) {
        match self {
            Self::Postgres(client) => client.batch_execute(sql).await.unwrap(),
            Self::Sqlite(path) => {
                let (path, sql) = (path.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(path).unwrap();
                    conn.busy_timeout(Duration::from_secs(10)).unwrap();
                    conn.execute_batch(&sql).unwrap();
                })
                .await
                .unwrap();
            }
        }
    }

    /// (id, data) of every outbox row, by id.
    async fn ids_and_data(&self) -> Vec<(i64, i64)> {
        let sql = "SELECT id, publish FROM notify_outbox ORDER BY id";
        let texts: Vec<(i64, String)> = match self {
            Self::Postgres(client) => client
                .query(
                    "SELECT id, publish::text FROM notify_outbox ORDER BY id",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
            Self::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
        };
        texts
            .into_iter()
            .map(|(id, publish)| {
                let v: serde_json::Value = serde_json::from_str(&publish).unwrap();
                (id, v["data"].as_i64().unwrap())
            })
            .collect()
    }
}

impl Backend {
    /// A raw connection of its own (a service's, not the store's).
    fn connect_raw(&self) -> impl std::future::Future<Output = Raw> + Send + 'static {
        let target = match self {
            Self::Postgres(db) => Ok(db.url.clone()),
            Self::Sqlite(dir) => Err(dir.join("notify.db")),
        };
        async move {
            match target {
                Ok(url) => {
                    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    Raw::Postgres(client)
                }
                Err(path) => Raw::Sqlite(path),
            }
        }
    }
}

async fn subscriptions_are_sets_per_user(db: Backend) {
    let s = db.migrated().await;
    let (lobby, news) = (
        Topic::parse("room:lobby").unwrap(),
        Topic::parse("room:news").unwrap(),
    );
    s.commit(&[
        item(Target::Topic(lobby.clone())),
        item(Target::Topic(lobby.clone())),
    ])
    .await
    .unwrap();
    // New, then already there; the topic's head comes with it.
    assert_eq!(s.subscribe(&user("hal"), &lobby).await.unwrap(), (true, 2));
    assert_eq!(s.subscribe(&user("hal"), &lobby).await.unwrap(), (false, 2));
    assert_eq!(s.subscribe(&user("hal"), &news).await.unwrap(), (true, 0));
    assert_eq!(s.subscribe(&user("ida"), &lobby).await.unwrap(), (true, 2));
    assert_eq!(s.subscriber_count(&lobby).await.unwrap(), 2);
    assert_eq!(
        s.subscriptions_of(&user("hal")).await.unwrap(),
        [lobby.clone(), news.clone()]
    );
    assert!(s.unsubscribe(&user("hal"), &lobby).await.unwrap());
    assert!(!s.unsubscribe(&user("hal"), &lobby).await.unwrap());
    assert_eq!(s.subscriber_count(&lobby).await.unwrap(), 1);
    assert_eq!(s.subscriptions_of(&user("hal")).await.unwrap(), [news]);
    assert!(
        s.subscriptions_of(&user("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn history_pages_through_a_feed_and_hides_expired_entries(db: Backend) {
    let s = db.migrated().await;
    let jo = user("jo");
    let mut batch: Vec<PublishItem> = (0..5)
        .map(|n| {
            let mut i = item(Target::User(jo.clone()));
            i.publish.event = format!("e{n}");
            i.publish.data = format!("{{\"n\":{n}}}");
            i
        })
        .collect();
    // A list message's payload is stored once and read through the join.
    let mut list = item(Target::Users(vec![jo.clone(), user("kim")]));
    list.publish.data = "\"shared\"".into();
    batch.push(list.clone());
    // Already expired when it is read: never shown, though it took a seq.
    let mut gone = item(Target::User(jo.clone()));
    gone.publish.ttl = Duration::ZERO;
    batch.push(gone);
    let committed = s.commit(&batch).await.unwrap();
    assert_eq!(committed[5].inbox_seqs, [(jo.clone(), 6), (user("kim"), 1)]);

    let first = s.history(&Feed::Inbox(jo.clone()), 0, 2).await.unwrap();
    assert_eq!(first.head_seq, 7);
    assert_eq!(
        first
            .messages
            .iter()
            .map(|m| (m.seq, m.event.as_str(), m.data.as_str()))
            .collect::<Vec<_>>(),
        [(1, "e0", "{\"n\":0}"), (2, "e1", "{\"n\":1}")]
    );
    assert_eq!(first.messages[0].message_id, committed[0].message_id);
    assert_eq!(first.messages[0].ts, committed[0].ts);
    let rest = s.history(&Feed::Inbox(jo.clone()), 2, 100).await.unwrap();
    assert_eq!(
        rest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
    assert_eq!(rest.messages[3].data, "\"shared\"");
    let kim = s.history(&Feed::Inbox(user("kim")), 0, 100).await.unwrap();
    assert_eq!(kim.messages[0].message_id, list.message_id);
    let none = s
        .history(&Feed::Inbox(user("nobody")), 0, 100)
        .await
        .unwrap();
    assert_eq!((none.messages.len(), none.head_seq), (0, 0));
}

async fn every_fight_change_lands_in_the_outbox_with_gap_free_ids(db: Backend) {
    db.migrated().await;
    let (book, log) = (db.fight_book(), db.fight_log());
    let fight = |id| NewFight {
        id,
        creator_id: "cora",
        stake: 500,
        currency: "EUR",
        accept_within: Duration::from_secs(3600),
    };
    book.create(&fight("f1")).await.unwrap();
    book.accept("f1", "abe").await.unwrap();
    book.restake("f1", 700).await.unwrap();
    book.complete("f1", "abe").await.unwrap();
    book.create(&fight("f2")).await.unwrap();
    book.cancel("f2").await.unwrap();
    assert!(book.accept("no-such-fight", "abe").await.is_err());

    let rows = log.changes(0, 100).await.unwrap();
    let got: Vec<(i64, Option<&str>)> = rows
        .iter()
        .map(|r| (r.id, r.old_status.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (1, None),
            (2, Some("open")),
            (3, Some("accepted")),
            (4, Some("accepted")),
            (5, None),
            (6, Some("open")),
        ]
    );
    let row: serde_json::Value = serde_json::from_str(&rows[3].fight).unwrap();
    assert_eq!(
        (
            row["id"].as_str(),
            row["status"].as_str(),
            row["winner_id"].as_str(),
            row["acceptor_id"].as_str(),
            row["stake"].as_i64(),
            row["currency"].as_str()
        ),
        (
            Some("f1"),
            Some("completed"),
            Some("abe"),
            Some("abe"),
            Some(700),
            Some("EUR")
        )
    );
    for field in ["accept_deadline", "created_at", "updated_at"] {
        let text = row[field].as_str().unwrap_or_default();
        assert!(text.len() >= 20 && text.contains('T'), "{field}: {text:?}");
    }
    assert_eq!(log.changes(4, 1).await.unwrap()[0].id, 5, "pages by id");
    let (behind, age) = log.lag(2).await.unwrap();
    assert_eq!(behind, 4);
    assert!(
        (0.0..60.0).contains(&age),
        "age of the oldest unread: {age}"
    );
    assert_eq!(log.lag(6).await.unwrap(), (0, 0.0));
}

async fn one_relay_holds_the_lease_and_only_it_moves_the_cursor(db: Backend) {
    db.migrated().await;
    let (a, b) = (db.relay_position("group"), db.relay_position("group"));
    let other_group = db.relay_position("other");
    let ttl = Duration::from_secs(30);
    assert!(a.hold_lease("a", ttl).await.unwrap());
    assert!(
        a.hold_lease("a", ttl).await.unwrap(),
        "renewed by its holder"
    );
    assert!(!b.hold_lease("b", ttl).await.unwrap(), "held by a");
    assert!(
        other_group.hold_lease("b", ttl).await.unwrap(),
        "groups apart"
    );

    assert_eq!(a.cursor().await.unwrap(), 0);
    assert!(a.advance("a", 5).await.unwrap());
    assert!(
        !b.advance("b", 9).await.unwrap(),
        "fenced: b holds no lease"
    );
    assert!(a.advance("a", 3).await.unwrap());
    assert_eq!(b.cursor().await.unwrap(), 5, "never backwards, shared");
    assert_eq!(other_group.cursor().await.unwrap(), 0);

    // Given back: the standby takes it at once.
    a.release_lease("a").await.unwrap();
    assert!(!a.advance("a", 6).await.unwrap());
    assert!(b.hold_lease("b", Duration::from_millis(200)).await.unwrap());
    // Lapsed: anyone may take it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !b.advance("b", 7).await.unwrap(),
        "an expired lease fences too"
    );
    assert!(a.hold_lease("a", ttl).await.unwrap());
    assert!(a.advance("a", 7).await.unwrap());
    assert_eq!(a.cursor().await.unwrap(), 7);
}

async fn open_fights_past_their_deadline_are_overdue_until_recorded(db: Backend) {
    db.migrated().await;
    let (book, log) = (db.fight_book(), db.fight_log());
    let fight = |id, within| NewFight {
        id,
        creator_id: "cora",
        stake: 100,
        currency: "EUR",
        accept_within: within,
    };
    book.create(&fight("late", Duration::from_millis(10)))
        .await
        .unwrap();
    book.create(&fight("taken", Duration::from_millis(10)))
        .await
        .unwrap();
    book.accept("taken", "abe").await.unwrap();
    book.create(&fight("later", Duration::from_millis(50)))
        .await
        .unwrap();
    book.create(&fight("fresh", Duration::from_secs(3600)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids = |rows: Vec<String>| -> Vec<String> {
        rows.iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_str(r).unwrap();
                v["id"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    };
    assert_eq!(ids(log.overdue(10).await.unwrap()), ["late", "later"]);
    assert_eq!(ids(log.overdue(1).await.unwrap()), ["late"]);
    log.expired("late").await.unwrap();
    log.expired("late").await.unwrap();
    assert_eq!(ids(log.overdue(10).await.unwrap()), ["later"]);
}

/// The snippet a service applies to its own Postgres database makes the
/// same outbox there (and can be applied again beside notify's tables).
#[tokio::test]
async fn the_outbox_snippet_applies_to_a_services_own_database() {
    let db = TestDb::create().await;
    let snippet = include_str!("../../../migrations/notify_outbox.sql");
    // The same outbox as notify's own migration, word for word.
    let migration = include_str!("../../../migrations/postgres/0005_notify_outbox.sql");
    let tables = &migration[migration.find("CREATE TABLE notify_outbox_head").unwrap()..];
    assert!(
        snippet.contains(tables),
        "migrations/notify_outbox.sql drifted from 0005"
    );
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute(snippet).await.unwrap();
    client
        .batch_execute(
            r#"BEGIN;
               INSERT INTO notify_outbox (publish) VALUES ('{"topic":"room:x","event":"e","data":1}');
               INSERT INTO notify_outbox (publish) VALUES ('{"topic":"room:x","event":"e","data":2}');
               COMMIT;"#,
        )
        .await
        .unwrap();
    let ids: Vec<i64> = client
        .query("SELECT id FROM notify_outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1, 2]);
    // Not an object: refused by the table itself.
    let refused = client
        .batch_execute(r#"INSERT INTO notify_outbox (publish) VALUES ('[1]')"#)
        .await;
    assert!(refused.is_err());
}
