//! Starts a real notify-svc in-process on loopback ports against a fresh
//! database — Postgres, or SQLite for the tests run on both stores — and
//! gives tests a gRPC client.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use notify_harness::InProcessSvc;
#[allow(unused_imports)] // each test binary uses its own part
pub use notify_harness::{to_topic, to_user, to_users};
use notify_proto::v1::{
    self as pb, bridge_down::Msg as Down, bridge_link_client::BridgeLinkClient,
    bridge_up::Msg as Up, notify_client::NotifyClient,
};
use notify_svc::{Config, SvcArgs};
use test_support::{TestDb, TestDir};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Streaming, transport::Channel};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    svc: SvcArgs,
}

/// A configuration from these flags, in dev mode (loopback callers, unless
/// the flags configure credentials).
pub fn config(database_url: &str, flags: &[&str]) -> Config {
    let mut argv = vec!["notify-svc", "--dev", "--database-url", database_url];
    argv.extend_from_slice(flags);
    let cli = Cli::try_parse_from(argv).expect("flags parse");
    Config::from_args(&cli.svc).expect("valid config")
}

/// Which store a test runs notify-svc on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Instantiates each test body (`async fn name(backend: Backend)`) once per
/// store, in modules `postgres` and `sqlite`.
#[macro_export]
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::common::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::common::Backend::Sqlite).await;
                }
            )*
        }
    };
}

pub struct Svc {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    running: InProcessSvc,
    /// The database this instance owns (None for a second replica on it).
    pub db: Option<TestDb>,
    /// The SQLite directory this instance owns, if it runs on SQLite.
    pub sqlite: Option<TestDir>,
    /// Its database URL, for replicas.
    pub url: String,
}

impl Svc {
    pub async fn start() -> Self {
        Self::start_with(TestDb::create().await, |_| {}).await
    }

    /// Starts on a fresh database of `backend`.
    pub async fn start_on(backend: Backend) -> Self {
        Self::start_on_with(backend, |_| {}).await
    }

    /// Starts on a fresh database of `backend` with `tweak` applied.
    pub async fn start_on_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        match backend {
            Backend::Postgres => Self::start_with(TestDb::create().await, tweak).await,
            Backend::Sqlite => {
                let dir = TestDir::create("svc-sqlite");
                let url = format!("sqlite:{}", dir.join("notify.db").display());
                let mut cfg = config(&url, &[]);
                tweak(&mut cfg);
                let mut svc = Self::start_inner(None, cfg, url).await;
                svc.sqlite = Some(dir);
                svc
            }
        }
    }

    /// Starts with `tweak` applied to the configuration.
    pub async fn start_with(db: TestDb, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = config(&db.url, &[]);
        tweak(&mut cfg);
        Self::start_config(db, cfg).await
    }

    pub async fn start_config(db: TestDb, cfg: Config) -> Self {
        let url = db.url.clone();
        Self::start_inner(Some(db), cfg, url).await
    }

    /// Another replica on `url`'s database, which it does not own.
    pub async fn replica(url: &str) -> Self {
        Self::replica_with(url, |_| {}).await
    }

    /// Another replica on `url`'s database, with `tweak` applied.
    pub async fn replica_with(url: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = config(url, &[]);
        tweak(&mut cfg);
        Self::start_inner(None, cfg, url.to_owned()).await
    }

    async fn start_inner(db: Option<TestDb>, cfg: Config, url: String) -> Self {
        let running = InProcessSvc::start(cfg).await;
        Self {
            grpc: running.grpc,
            http: running.http,
            running,
            db,
            sqlite: None,
            url,
        }
    }

    pub async fn client(&self) -> NotifyClient<Channel> {
        NotifyClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect")
    }

    pub async fn stop(mut self) -> Option<TestDb> {
        tokio::time::timeout(Duration::from_secs(15), self.running.stop())
            .await
            .expect("notify-svc stops within 15 s")
            .expect("clean stop");
        self.db.take()
    }
}

/// Each user's inbox seq of a user-list publish, in list order.
pub fn inbox_seqs(r: &pb::PublishResponse) -> Vec<(String, u64)> {
    r.inbox_seqs
        .iter()
        .map(|s| (s.user_id.clone(), s.seq))
        .collect()
}

pub fn history_of_user(user: &str, since: u64, limit: u32) -> pb::HistoryRequest {
    pb::HistoryRequest {
        target: Some(pb::history_request::Target::UserId(user.into())),
        since,
        limit,
        after_acked: false,
    }
}

/// Every seq of a feed's history, read page by page.
pub async fn all_seqs(
    client: &mut NotifyClient<Channel>,
    target: pb::history_request::Target,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut since = 0;
    loop {
        let page = client
            .history(pb::HistoryRequest {
                target: Some(target.clone()),
                since,
                limit: 1000,
                after_acked: false,
            })
            .await
            .expect("history")
            .into_inner();
        seqs.extend(page.messages.iter().map(|m| m.seq));
        since = page.next_since;
        if !page.has_more {
            return seqs;
        }
    }
}

/// The notify-svc binary on free ports: (command, gRPC address).
pub fn binary(database_url: &str) -> (tokio::process::Command, String) {
    let grpc = format!("127.0.0.1:{}", test_support::free_port());
    let http = format!("127.0.0.1:{}", test_support::free_port());
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify-svc"));
    command
        .args([
            "--dev",
            "--grpc-addr",
            &grpc,
            "--http-addr",
            &http,
            "--database-url",
            database_url,
        ])
        .env(
            "RUST_LOG",
            std::env::var("NOTIFY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    (command, grpc)
}

/// A bridge as BridgeLink sees it: the up stream it sends on and the down
/// stream it reads.
pub struct FakeBridge {
    pub up: mpsc::Sender<pb::BridgeUp>,
    pub down: Streaming<pb::BridgeDown>,
}

impl FakeBridge {
    pub async fn attach(svc: &Svc, id: &str, connections: Vec<pb::LiveConnection>) -> Self {
        let (up, rx) = mpsc::channel(64);
        let hello = pb::BridgeHello {
            bridge_id: id.into(),
            connections,
        };
        up.send(pb::BridgeUp {
            msg: Some(Up::Hello(hello)),
        })
        .await
        .unwrap();
        let mut client = BridgeLinkClient::connect(format!("http://{}", svc.grpc))
            .await
            .unwrap();
        let down = client
            .attach(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { up, down }
    }

    pub async fn send(&self, msg: Up) {
        self.up.send(pb::BridgeUp { msg: Some(msg) }).await.unwrap();
    }

    pub async fn next(&mut self) -> Down {
        tokio::time::timeout(Duration::from_secs(10), self.down.next())
            .await
            .expect("a message from notify-svc within 10 s")
            .expect("stream open")
            .expect("no error")
            .msg
            .expect("a message")
    }
}
