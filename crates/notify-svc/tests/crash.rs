//! The real `notify-svc` binary killed with SIGKILL (and stopped with SIGTERM)
//! during a publish storm: every publish that was answered OK is in History
//! after a restart, and seqs have no gap.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::to_user;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use test_support::{TestDb, eventually};
use tokio::process::Child;

const USERS: usize = 8;

struct Binary {
    child: Child,
    grpc: String,
}

impl Binary {
    async fn start(database_url: &str) -> Self {
        let (mut command, grpc) = common::binary(database_url);
        let child = command.spawn().expect("spawn notify-svc");
        let url = format!("http://{grpc}");
        eventually("notify-svc accepts gRPC", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let mut c = NotifyClient::connect(url).await.ok()?;
                c.history(common::history_of_user("probe", 0, 1))
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        Self { child, grpc: url }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// Acknowledged publishes: user → message ids answered OK.
type Acked = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// Publishes from 32 callers until the server goes away; returns what was acked.
async fn storm(url: &str, until_acked: usize, acked: Acked) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for caller in 0..32 {
        let (url, acked) = (url.to_owned(), acked.clone());
        set.spawn(async move {
            let Ok(mut client) = NotifyClient::connect(url).await else {
                return;
            };
            for i in 0.. {
                let user = format!("u{}", (caller + i) % USERS);
                let req = pb::PublishRequest {
                    idempotency_key: format!("c{caller}-{i}"),
                    ..to_user(&user, &format!("{{\"i\":{i}}}"))
                };
                match client.publish(req).await {
                    Ok(r) => acked
                        .lock()
                        .unwrap()
                        .entry(user)
                        .or_default()
                        .push(r.into_inner().message_id),
                    Err(_) => return,
                }
            }
        });
    }
    eventually("storm under way", Duration::from_secs(30), || {
        let acked = acked.clone();
        async move {
            (acked.lock().unwrap().values().map(Vec::len).sum::<usize>() >= until_acked)
                .then_some(())
        }
    })
    .await;
    set
}

async fn assert_all_stored(url: &str, acked: &Acked) -> usize {
    let mut client = NotifyClient::connect(url.to_owned()).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let mut total = 0;
    for user in 0..USERS {
        let user = format!("u{user}");
        let mut stored = HashMap::new();
        let mut since = 0;
        loop {
            let page = client
                .history(common::history_of_user(&user, since, 1000))
                .await
                .unwrap()
                .into_inner();
            for m in &page.messages {
                stored.insert(m.message_id.clone(), m.seq);
            }
            since = page.next_since;
            if !page.has_more {
                break;
            }
        }
        let mut seqs: Vec<u64> = stored.values().copied().collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{user}: gap-free"
        );
        for id in acked.get(&user).into_iter().flatten() {
            assert!(stored.contains_key(id), "{user}: acked message {id} lost");
            total += 1;
        }
    }
    total
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_publish() {
    let db = TestDb::create().await;
    let acked: Acked = Arc::default();
    let mut first = Binary::start(&db.url).await;
    let mut storm_tasks = storm(&first.grpc, 2_000, acked.clone()).await;
    first.signal("KILL");
    first.child.wait().await.unwrap();
    while storm_tasks.join_next().await.is_some() {}

    let mut second = Binary::start(&db.url).await;
    let checked = assert_all_stored(&second.grpc, &acked).await;
    assert!(checked >= 2_000, "checked {checked}");
    second.signal("KILL");
    second.child.wait().await.unwrap();
}

#[tokio::test]
async fn sigterm_drains_in_flight_publishes_and_exits_0() {
    let db = TestDb::create().await;
    let acked: Acked = Arc::default();
    let mut first = Binary::start(&db.url).await;
    let mut storm_tasks = storm(&first.grpc, 1_000, acked.clone()).await;
    first.signal("TERM");
    let status = first.child.wait().await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    while storm_tasks.join_next().await.is_some() {}

    let mut second = Binary::start(&db.url).await;
    assert_all_stored(&second.grpc, &acked).await;
    second.signal("KILL");
    second.child.wait().await.unwrap();
}

#[tokio::test]
async fn the_binary_tells_systemd_it_is_ready_once_migrated() {
    let db = TestDb::create().await;
    let dir = std::env::temp_dir().join(format!("notify-svc-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (mut command, grpc) = common::binary(&db.url);
    let _child = command
        .env("NOTIFY_SOCKET", &socket_path)
        .spawn()
        .expect("spawn notify-svc");
    let said = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(said.contains("READY=1"), "{said:?}");
    // Ready means served: a call answers at once.
    let mut client = NotifyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client
        .history(common::history_of_user("probe", 0, 1))
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
