//! A rolling restart under load, as docs/operations.md tells operators to do
//! it: two bridges (real binaries) behind one notify-svc, clients spread
//! over both, a producer publishing throughout; each bridge in turn gets
//! SIGTERM (its sockets close with 1012, clients reconnect to the other one
//! and resume after their last seq), exits 0 and comes back. No message is
//! lost, none arrives twice, and every client of a restarted bridge was told
//! 1012.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use serde_json::Value;
use test_support::{TestDb, TestDir, eventually, free_port, process::ServiceProcess, wait_ready};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

const CLIENTS: usize = 20;
const MESSAGES: u64 = 3_000;

#[derive(Default)]
struct Inbox {
    seqs: BTreeSet<u64>,
    duplicates: u64,
}

impl Inbox {
    fn contiguous(&self) -> u64 {
        let mut n = 0;
        while self.seqs.contains(&(n + 1)) {
            n += 1;
        }
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_bridges_one_by_one_under_load_loses_nothing() {
    let db = TestDb::create().await;
    let data = TestDir::create("rolling");
    let exe = env!("CARGO_BIN_EXE_notify");
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut svc = ServiceProcess::notify_svc(exe, &grpc, &db.url);
    svc.start();
    let (ws, ops) = (test_support::free_addrs(2), test_support::free_addrs(2));
    let mut bridges: Vec<ServiceProcess> = (0..2)
        .map(|i| {
            let (name, url) = (format!("bridge-{i}"), format!("http://{grpc}"));
            ServiceProcess::dev_bridge(exe, &name, &ws[i], &ops[i], &url, &data.path)
                .env("BRIDGE_ID", format!("rolling-{i}"))
        })
        .collect();
    for (bridge, ops) in bridges.iter_mut().zip(&ops) {
        bridge.start();
        wait_ready(ops).await;
    }
    let issuer = notify_auth::DevIssuer::load_or_create(
        &data.join(notify_auth::DEV_KEY_FILE),
        notify_auth::DEV_ISSUER,
        notify_auth::DEV_CLIENT_ID,
    )
    .unwrap();

    // Clients: start on bridge i % 2; on a close, reconnect to the next
    // bridge resuming after the last contiguous seq.
    let inboxes: Arc<Mutex<HashMap<String, Inbox>>> = Arc::default();
    let told_1012 = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("roller-{i}");
        let token = issuer.mint(&notify_auth::DevToken::access(&user)).unwrap();
        let (ws, inboxes, told_1012, connected) = (
            ws.clone(),
            inboxes.clone(),
            told_1012.clone(),
            connected.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut pick = i;
            let mut first = true;
            loop {
                let since = inboxes
                    .lock()
                    .unwrap()
                    .get(&user)
                    .map_or(0, Inbox::contiguous);
                let url = format!("ws://{}/ws?token={token}&since={since}", ws[pick % 2]);
                let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url).await else {
                    pick += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if std::mem::take(&mut first) {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                while let Some(Ok(frame)) = socket.next().await {
                    match frame {
                        Message::Text(text) => {
                            let v: Value = serde_json::from_str(text.as_str()).unwrap();
                            if v["type"] != "message" {
                                continue;
                            }
                            let seq = v["seq"].as_u64().unwrap();
                            {
                                let mut inboxes = inboxes.lock().unwrap();
                                let inbox = inboxes.entry(user.clone()).or_default();
                                if !inbox.seqs.insert(seq) {
                                    inbox.duplicates += 1;
                                }
                            }
                            let ack = format!(r#"{{"action":"ack","seq":{seq}}}"#);
                            let _ = socket.send(Message::text(ack)).await;
                        }
                        Message::Close(Some(close)) if close.code == CloseCode::Restart => {
                            told_1012.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
                pick += 1;
            }
        }));
    }
    eventually("all clients connected", Duration::from_secs(30), || async {
        (connected.load(Ordering::Relaxed) == CLIENTS as u64).then_some(())
    })
    .await;

    // The producer: round-robin over the users, until MESSAGES are committed.
    let committed = Arc::new(AtomicU64::new(0));
    let producer = {
        let (grpc, committed) = (grpc.clone(), committed.clone());
        tokio::spawn(async move {
            let mut client = NotifyClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
            for n in 0..MESSAGES {
                client
                    .publish(pb::PublishRequest {
                        target: Some(pb::publish_request::Target::UserId(format!(
                            "roller-{}",
                            n as usize % CLIENTS
                        ))),
                        event: "tick".into(),
                        data: format!("{{\"n\":{n}}}"),
                        idempotency_key: format!("rolling-{n}"),
                        ttl_seconds: 0,
                        push: None,
                    })
                    .await
                    .unwrap();
                committed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // The rolling restart: one bridge at a time, while messages flow.
    for (i, bridge) in bridges.iter_mut().enumerate() {
        let at = MESSAGES / 3 * (i as u64 + 1);
        eventually("publishes under way", Duration::from_secs(60), || async {
            (committed.load(Ordering::Relaxed) >= at).then_some(())
        })
        .await;
        let before = told_1012.load(Ordering::Relaxed);
        let status = bridge.terminate().await.expect("the bridge ran");
        assert!(status.success(), "bridge-{i} exits 0 on SIGTERM: {status}");
        eventually("its clients told 1012", Duration::from_secs(10), || async {
            (told_1012.load(Ordering::Relaxed) > before).then_some(())
        })
        .await;
        bridge.start();
        wait_ready(&ops[i]).await;
    }
    producer.await.unwrap();

    // Everyone gets everything: seqs 1..=MESSAGES/CLIENTS each, once.
    let per_user = MESSAGES / CLIENTS as u64;
    eventually("every inbox complete", Duration::from_secs(60), || async {
        let inboxes = inboxes.lock().unwrap();
        (inboxes.len() == CLIENTS && inboxes.values().all(|i| i.contiguous() == per_user))
            .then_some(())
    })
    .await;
    {
        let inboxes = inboxes.lock().unwrap();
        let duplicates: u64 = inboxes.values().map(|i| i.duplicates).sum();
        assert_eq!(duplicates, 0, "no message twice");
        assert!(inboxes.values().all(|i| i.seqs.len() as u64 == per_user));
    }
    // Every client was on one of the two bridges, and both restarted.
    let told = told_1012.load(Ordering::Relaxed);
    assert!(
        told >= CLIENTS as u64,
        "{told} 1012 closes for {CLIENTS} clients"
    );
    for t in tasks {
        t.abort();
    }
    for b in &mut bridges {
        b.kill9().await;
    }
    svc.kill9().await;
}
