//! `username:` publish targets resolved through Cognito (the moto stand-in
//! scripts/test starts): a producer names users by username, the messages
//! land in the inboxes of their `sub`s.

mod common;

use common::{Backend, Svc, history_of_user, inbox_seqs, to_user, to_users};
use notify_auth::CognitoConfig;
use notify_proto::v1 as pb;
use test_support::cognito::{REGION, TestPool};
use tonic::Code;

async fn sub_of(pool: &TestPool, username: &str) -> String {
    let user = pool
        .api
        .admin_get_user()
        .user_pool_id(&pool.pool_id)
        .username(username)
        .send()
        .await
        .unwrap();
    user.user_attributes()
        .iter()
        .find(|a| a.name() == "sub")
        .and_then(|a| a.value())
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_publish_to_a_username_reaches_that_users_inbox() {
    let pool = TestPool::create().await;
    pool.add_user("alice", None).await;
    pool.add_user("bob", None).await;
    let (alice, bob) = (sub_of(&pool, "alice").await, sub_of(&pool, "bob").await);
    let svc = Svc::start_on_with(Backend::Sqlite, |cfg| {
        cfg.cognito = Some(CognitoConfig {
            endpoint_url: Some(pool.endpoint.clone()),
            credentials: Some(("test".into(), "test".into())),
            ..CognitoConfig::new(REGION, &pool.pool_id)
        });
    })
    .await;
    let mut api = svc.client().await;

    let sent = api
        .publish(to_user("username:alice", r#"{"n":1}"#))
        .await
        .expect("username target")
        .into_inner();
    assert_eq!(sent.seq, 1);
    let page = api
        .history(history_of_user(&alice, 0, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages[0].message_id, sent.message_id);

    let list = api
        .publish(to_users(&["username:alice", &bob], r#"{"n":2}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inbox_seqs(&list), [(alice.clone(), 2), (bob.clone(), 1)]);

    let missing = api
        .publish(to_user("username:nobody", "1"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{}", missing.message());
    assert!(missing.message().contains("nobody"));

    // In a batch, an unknown username fails alone.
    let batch = api
        .publish_batch(pb::PublishBatchRequest {
            requests: vec![
                to_user("username:nobody", "1"),
                to_user("username:bob", "3"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let first = &batch.results[0].result;
    assert!(
        matches!(first, Some(pb::publish_result::Result::Error(e)) if e.code == Code::NotFound as i32),
        "{first:?}"
    );
    assert!(matches!(
        &batch.results[1].result,
        Some(pb::publish_result::Result::Ok(ok)) if ok.seq == 2
    ));
}

#[tokio::test]
async fn without_a_user_pool_a_username_target_is_invalid() {
    let svc = Svc::start_on(Backend::Sqlite).await;
    let refused = svc
        .client()
        .await
        .publish(to_user("username:alice", "1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("COGNITO_USER_POOL_ID"),
        "{}",
        refused.message()
    );
}
