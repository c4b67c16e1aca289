//! The Postgres store against a real server: migrations, multi-replica
//! commits, retention.

use std::{sync::Arc, time::Duration};

use notify_core::{
    MessageId, NamespacePolicy, Publish, SubscribeRule, Target, Topic, TopicPolicy, UserId,
};
use notify_store::{Feed, PgStore, PgStoreConfig, PublishItem, Store, StoreError, migrate};
use test_support::TestDb;

fn store(db: &TestDb) -> PgStore {
    PgStore::new(PgStoreConfig::new(db.url.clone())).expect("pool")
}

fn user(name: &str) -> UserId {
    UserId::parse("user", name).unwrap()
}

fn item(target: Target) -> PublishItem {
    PublishItem {
        caller: "test".into(),
        message_id: MessageId::new(),
        publish: Publish {
            target,
            event: "e".into(),
            data: "{}".into(),
            idempotency_key: None,
            ttl: Duration::from_secs(3600),
        },
        log_max_len: 100,
    }
}

async fn sql(db: &TestDb, statement: &str) {
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute(statement).await.unwrap();
}

#[tokio::test]
async fn migrations_apply_once_even_when_runners_race() {
    let db = TestDb::create().await;
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let s = store(&db);
            tokio::spawn(async move { s.migrate().await })
        })
        .collect();
    let mut applied = 0;
    for r in runners {
        applied += r.await.unwrap().expect("every runner succeeds");
    }
    assert_eq!(applied, migrate::POSTGRES.len());
    assert_eq!(store(&db).migrate().await.unwrap(), 0);

    sql(
        &db,
        "UPDATE schema_migrations SET checksum = checksum + 1 WHERE version = 1",
    )
    .await;
    match store(&db).migrate().await {
        Err(StoreError::MigrationChanged { version: 1, .. }) => {}
        other => panic!("expected MigrationChanged, got {other:?}"),
    }
}

#[tokio::test]
async fn two_replicas_committing_overlapping_batches_keep_seqs_gap_free() {
    let db = TestDb::create().await;
    let replicas = [Arc::new(store(&db)), Arc::new(store(&db))];
    replicas[0].migrate().await.unwrap();
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

#[tokio::test]
async fn the_sweeper_drops_expired_messages_and_old_topic_entries() {
    let db = TestDb::create().await;
    let s = store(&db);
    s.migrate().await.unwrap();
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
    sql(
        &db,
        "UPDATE messages SET expires_at = now() - interval '1 second';
         UPDATE inbox SET expires_at = now() - interval '1 second'
           WHERE seq <= 3 OR user_id = 'bea';
         UPDATE topic_log SET created_at = now() - interval '2 hours' WHERE seq = 1;",
    )
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

#[tokio::test]
async fn expired_idempotency_keys_are_taken_over() {
    let db = TestDb::create().await;
    let s = store(&db);
    s.migrate().await.unwrap();
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
    sql(
        &db,
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'",
    )
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

#[tokio::test]
async fn racing_replicas_store_each_idempotency_key_once() {
    let db = TestDb::create().await;
    let replicas = [Arc::new(store(&db)), Arc::new(store(&db))];
    replicas[0].migrate().await.unwrap();
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

#[tokio::test]
async fn acks_are_cumulative_and_bounded_by_the_head() {
    let db = TestDb::create().await;
    let s = store(&db);
    s.migrate().await.unwrap();
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

#[tokio::test]
async fn positions_of_many_feeds_come_back_in_the_order_asked() {
    let db = TestDb::create().await;
    let s = store(&db);
    s.migrate().await.unwrap();
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

#[tokio::test]
async fn the_registry_takes_and_drops_connections_in_batches() {
    let db = TestDb::create().await;
    let s = store(&db);
    s.migrate().await.unwrap();
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
    assert_eq!(s.remove_bridge("b1").await.unwrap(), 1);
    assert!(s.connections_of(&user("gus")).await.unwrap().is_empty());
    assert_eq!(s.remove_connections(&[]).await.unwrap(), 0);
}

async fn connect(db: &TestDb) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

const NEW_FIGHT: &str =
    "INSERT INTO fights (id, creator_id, stake, currency, status, accept_deadline)
     VALUES ($1, 'cora', 500, 'EUR', 'open', now() + interval '1 hour')";

/// (id, fight_id, old_status, new_status) of the whole outbox.
async fn outbox(client: &tokio_postgres::Client) -> Vec<(i64, String, Option<String>, String)> {
    client
        .query(
            "SELECT id, fight_id, old_status, new_status FROM fight_outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn every_fight_change_lands_in_the_outbox_with_gap_free_ids() {
    let db = TestDb::create().await;
    store(&db).migrate().await.unwrap();
    let c = connect(&db).await;
    c.execute(NEW_FIGHT, &[&"f1"]).await.unwrap();
    c.batch_execute(
        "UPDATE fights SET status = 'accepted', acceptor_id = 'abe' WHERE id = 'f1';
         UPDATE fights SET status = 'completed', winner_id = 'abe' WHERE id = 'f1';",
    )
    .await
    .unwrap();
    // A rolled-back change leaves no hole behind.
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(NEW_FIGHT, &[&"rolled-back"]).await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    c.execute(NEW_FIGHT, &[&"f2"]).await.unwrap();

    let s = |v: &str| v.to_owned();
    assert_eq!(
        outbox(&c).await,
        [
            (1, s("f1"), None, s("open")),
            (2, s("f1"), Some(s("open")), s("accepted")),
            (3, s("f1"), Some(s("accepted")), s("completed")),
            (4, s("f2"), None, s("open")),
        ]
    );
    let text: String = c
        .query_one("SELECT fight::text FROM fight_outbox WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    let row: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (row["winner_id"].as_str(), row["stake"].as_i64()),
        (Some("abe"), Some(500))
    );
}

#[tokio::test]
async fn outbox_ids_are_handed_out_in_commit_order() {
    let db = TestDb::create().await;
    store(&db).migrate().await.unwrap();
    let (first, second, reader) = (connect(&db).await, connect(&db).await, connect(&db).await);
    first.batch_execute("BEGIN").await.unwrap();
    first.execute(NEW_FIGHT, &[&"early"]).await.unwrap();
    // The second writer waits for the first's commit to get its id.
    let late = tokio::spawn(async move {
        second.batch_execute("BEGIN").await.unwrap();
        second.execute(NEW_FIGHT, &[&"late"]).await.unwrap();
        second.batch_execute("COMMIT").await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !late.is_finished(),
        "the second writer waits on the head row"
    );
    assert!(
        outbox(&reader).await.is_empty(),
        "nothing visible before a commit"
    );
    first.batch_execute("COMMIT").await.unwrap();
    late.await.unwrap();
    let ids: Vec<(i64, String)> = outbox(&reader)
        .await
        .into_iter()
        .map(|(id, fight, ..)| (id, fight))
        .collect();
    assert_eq!(ids, [(1, "early".to_owned()), (2, "late".to_owned())]);
}
