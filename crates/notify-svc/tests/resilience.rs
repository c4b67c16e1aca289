//! Caller authentication, and what callers see when Postgres goes away.

mod common;

use std::time::{Duration, Instant};

use common::{Svc, config, to_user};
use notify_proto::v1::notify_client::NotifyClient;
use test_support::{Relay, TestDb, postgres_addr, via};
use tonic::{Code, Request, metadata::MetadataValue};

#[tokio::test]
async fn api_tokens_decide_who_may_call() {
    let db = TestDb::create().await;
    let cfg = config(
        &db.url,
        &[
            "--api-tokens",
            "bets=0123456789abcdef0123,ops=fedcba9876543210fedc",
        ],
    );
    let svc = Svc::start_config(db, cfg).await;
    let mut client = svc.client().await;
    let with = |token: Option<&str>| {
        let mut req = Request::new(to_user("ivy", "{}"));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", MetadataValue::try_from(t).unwrap());
        }
        req
    };
    let cases = [
        (None, "missing authorization"),
        (Some("Bearer nope"), "unknown API token"),
        (Some("Basic 0123456789abcdef0123"), "Bearer"),
    ];
    for (token, needle) in cases {
        let status = client.publish(with(token)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        assert!(
            status.message().contains(needle),
            "{token:?}: {}",
            status.message()
        );
    }
    let ok = client
        .publish(with(Some("Bearer 0123456789abcdef0123")))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().seq, 1);
    // Idempotency keys are per caller: the same key from two callers is two messages.
    for token in ["Bearer 0123456789abcdef0123", "Bearer fedcba9876543210fedc"] {
        let mut req = with(Some(token));
        req.get_mut().idempotency_key = "k1".into();
        assert!(!client.publish(req).await.unwrap().into_inner().duplicate);
    }
    svc.stop().await;
}

#[tokio::test]
async fn a_database_outage_is_unavailable_never_a_hang_and_heals() {
    let db = TestDb::create().await;
    let relay = Relay::start(postgres_addr(&db.url)).await;
    let cfg = config(&via(&db.url, relay.addr), &["--db-timeout-ms", "2000"]);
    let svc = Svc::start_config(db, cfg).await;
    let mut client = svc.client().await;
    assert_eq!(
        client
            .publish(to_user("jo", "1"))
            .await
            .unwrap()
            .into_inner()
            .seq,
        1
    );

    relay.cut();
    let started = Instant::now();
    let mut req = Request::new(to_user("jo", "2"));
    req.set_timeout(Duration::from_secs(8));
    let status = client.publish(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{}", status.message());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered before the deadline"
    );
    let readyz = format!("http://{}/readyz", svc.http);
    test_support::eventually("readyz 503", Duration::from_secs(10), || {
        let url = readyz.clone();
        async move { (http_status(&url).await == Some(503)).then_some(()) }
    })
    .await;

    // gRPC health says the same to load balancers.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", svc.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "notify.v1.Notify".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );

    relay.restore();
    let seq = test_support::eventually("publish works again", Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            client
                .publish(to_user("jo", "3"))
                .await
                .ok()
                .map(|r| r.into_inner().seq)
        }
    })
    .await;
    // The refused publish was not committed: seqs stay gap-free.
    assert_eq!(seq, 2);
    svc.stop().await;
}

#[tokio::test]
async fn ops_endpoints_answer() {
    let svc = Svc::start().await;
    let mut client = NotifyClient::connect(format!("http://{}", svc.grpc))
        .await
        .unwrap();
    client.publish(to_user("kim", "{}")).await.unwrap();
    assert_eq!(
        http_status(&format!("http://{}/healthz", svc.http)).await,
        Some(200)
    );
    test_support::eventually("readyz 200", Duration::from_secs(10), || async {
        (http_status(&format!("http://{}/readyz", svc.http)).await == Some(200)).then_some(())
    })
    .await;
    let metrics = http_body(&format!("http://{}/metrics", svc.http)).await;
    assert!(
        metrics.contains("notify_messages_committed_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("notify_rpc_requests_total{method=\"Publish\",code=\"OK\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("notify_rpc_seconds_count{method=\"Publish\",code=\"OK\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("notify_commit_batch_items_count 1"),
        "{metrics}"
    );
    svc.stop().await;
}

/// A minimal HTTP/1.0 GET: status code of the answer.
async fn http_status(url: &str) -> Option<u16> {
    let text = http_get(url).await?;
    text.split_whitespace().nth(1)?.parse().ok()
}

async fn http_body(url: &str) -> String {
    let text = http_get(url).await.expect("HTTP answer");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

async fn http_get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    test_support::http_get(host, &path).await
}

#[tokio::test]
async fn a_full_publish_queue_is_resource_exhausted_and_loses_nothing() {
    let db = TestDb::create().await;
    let svc = Svc::start_with(db, |cfg| {
        cfg.pipeline.committers = 1;
        cfg.pipeline.queue = 2;
    })
    .await;
    let mut client = svc.client().await;
    client.publish(to_user("zed", "0")).await.unwrap();
    // Hold zed's inbox head: the next commit waits on the row lock.
    let url = &svc.db.as_ref().unwrap().url;
    let (locker, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; SELECT * FROM inbox_heads WHERE user_id = 'zed' FOR UPDATE")
        .await
        .unwrap();

    let mut waiting = Vec::new();
    let mut refused = None;
    for i in 1..=10 {
        let mut c = client.clone();
        let mut call = tokio::spawn(async move { c.publish(to_user("zed", &i.to_string())).await });
        // A call still pending after 300 ms is waiting (committing or queued).
        match tokio::time::timeout(Duration::from_millis(300), &mut call).await {
            Ok(result) => {
                refused = Some(
                    result
                        .unwrap()
                        .expect_err("nothing can commit while the head is locked"),
                );
                break;
            }
            Err(_) => waiting.push(call),
        }
    }
    let status = refused.expect("the queue fills up");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("retry"), "{}", status.message());
    // One in the blocked commit, two in the queue.
    assert_eq!(waiting.len(), 3);

    locker.batch_execute("COMMIT").await.unwrap();
    for call in waiting {
        call.await
            .unwrap()
            .expect("a queued publish commits once the lock is gone");
    }
    let seqs = common::all_seqs(
        &mut client,
        notify_proto::v1::history_request::Target::UserId("zed".into()),
    )
    .await;
    assert_eq!(seqs, [1, 2, 3, 4], "the refused publish stored nothing");
    svc.stop().await;
}
