//! What only Postgres needs proving: fight writers committing concurrently
//! get outbox ids in commit order, and a rolled-back change leaves no hole.
//! (SQLite admits one writer at a time, so there the order is given.) The
//! behaviours both backends share are in `conformance.rs`.

use std::time::Duration;

use notify_store::{PgStore, PgStoreConfig, Store};
use test_support::TestDb;

fn store(db: &TestDb) -> PgStore {
    PgStore::new(PgStoreConfig::new(db.url.clone())).expect("pool")
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
async fn a_rolled_back_fight_change_leaves_no_hole() {
    let db = TestDb::create().await;
    store(&db).migrate().await.unwrap();
    let c = connect(&db).await;
    c.execute(NEW_FIGHT, &[&"f1"]).await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(NEW_FIGHT, &[&"rolled-back"]).await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    c.execute(NEW_FIGHT, &[&"f2"]).await.unwrap();
    let s = |v: &str| v.to_owned();
    assert_eq!(
        outbox(&c).await,
        [(1, s("f1"), None, s("open")), (2, s("f2"), None, s("open"))]
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
