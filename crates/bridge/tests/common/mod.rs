//! What the bridge's end-to-end tests share: a real notify-svc (in-process,
//! real gRPC, real Postgres), real bridges, real WebSocket clients.
#![allow(dead_code)] // each test binary uses its own part of it

use std::{sync::Arc, time::Duration};

use futures::{SinkExt, StreamExt};
use notify_auth::{DevIssuer, DevToken, Verifier};
use notify_bridge::{BridgeConfig, SendBound};
use notify_harness::InProcessSvc;
#[allow(unused_imports)] // each test binary uses its own part
pub use notify_harness::{to_topic, to_user};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use serde_json::Value;
use test_support::TestDb;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest},
};
use tokio_util::sync::CancellationToken;

pub struct Platform {
    pub grpc: String,
    pub ws: String,
    /// The first bridge's ops port (/metrics).
    pub ops: String,
    pub issuer: Arc<DevIssuer>,
    pub verifier: Verifier,
    /// Stops the bridges.
    pub shutdown: CancellationToken,
    /// The notify-svc (None while stopped).
    pub svc: Option<InProcessSvc>,
    pub db: TestDb,
}

/// A notify-svc on `db_url` that checks Dev Panel admins with `users`.
pub async fn start_svc(db_url: &str, users: Option<Verifier>) -> InProcessSvc {
    let mut config = notify_svc::Config::for_database(db_url).unwrap();
    config.users = users;
    InProcessSvc::start(config).await
}

impl Platform {
    pub async fn start() -> Self {
        Self::start_with_queue(SendBound::default()).await
    }

    pub async fn start_with_queue(send_queue: SendBound) -> Self {
        Self::start_with(|config| config.send_queue = send_queue).await
    }

    /// A platform whose first bridge's settings `tweak` changes.
    pub async fn start_with(tweak: impl FnOnce(&mut BridgeConfig)) -> Self {
        let db = TestDb::create().await;
        let shutdown = CancellationToken::new();
        let issuer = Arc::new(DevIssuer::generate("http://dev", "app").unwrap());
        let verifier = issuer.verifier();
        let svc = start_svc(&db.url, Some(verifier.clone())).await;
        let grpc = svc.url();

        let mut platform = Self {
            grpc,
            ws: String::new(),
            ops: String::new(),
            issuer,
            verifier,
            shutdown,
            svc: Some(svc),
            db,
        };
        let mut config = platform.bridge_config("bridge-test", SendBound::default());
        tweak(&mut config);
        let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
        platform.ops = ops.local_addr().unwrap().to_string();
        config.ops = Some(ops);
        platform.ws = platform.run_bridge(config).await;
        platform
    }

    /// The close code a stalled client gets, read once the first bridge
    /// closed it (reading earlier would un-stall it): as a slow consumer
    /// (4008), or for silence (1001) — seen as the bridge's open connections
    /// falling to `open_after` (count the readers that are gone by then).
    ///
    /// Which one says what held the burst: 4008 when the client's queue
    /// overflowed (the burst was in memory, up to the bound); 1001 when a
    /// catch-up read had begun before the burst — after a link re-attach on
    /// a loaded machine — so the burst waited in the store (shed), not in
    /// memory, while the read's pages filled the socket and blocked it with
    /// nothing more to arrive. Either way nothing is unbounded; tests using
    /// this ping every few seconds so the second way ends soon too.
    pub fn close_code_once_stalled(
        &self,
        mut stalled: Client,
        open_after: f64,
    ) -> tokio::task::JoinHandle<Option<u16>> {
        let ops = self.ops.clone();
        tokio::spawn(async move {
            test_support::eventually(
                "the stalled client is closed",
                Duration::from_secs(120),
                || {
                    let ops = ops.clone();
                    async move {
                        let slow =
                            test_support::prometheus::value_at(&ops, "bridge_slow_consumers_total");
                        let open = test_support::prometheus::value_at(&ops, "bridge_connections");
                        (slow.await >= 1.0 || open.await <= open_after).then_some(())
                    }
                },
            )
            .await;
            closing_code(&mut stalled).await
        })
    }

    /// Starts a bridge attached to the notify-svc; returns its WebSocket URL.
    pub async fn add_bridge(&self, id: &str, send_queue: SendBound) -> String {
        let config = self.bridge_config(id, send_queue);
        self.run_bridge(config).await
    }

    pub async fn run_bridge(&self, config: BridgeConfig) -> String {
        let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws = format!("ws://{}/ws", ws_listener.local_addr().unwrap());
        tokio::spawn(notify_bridge::run(
            config,
            ws_listener,
            self.shutdown.clone(),
        ));
        ws
    }

    pub fn bridge_config(&self, id: &str, send_queue: SendBound) -> BridgeConfig {
        let sockets = notify_bridge::SocketArgs {
            send_queue: send_queue.frames,
            send_queue_bytes: send_queue.bytes,
            // Tests open many sockets from one IP, some for one user.
            connect_rate_per_ip: 0,
            max_per_user: 10,
            rate: 100,
            panel: true,
            ..notify_bridge::SocketArgs::from_env()
        };
        BridgeConfig::new(id, &sockets, self.verifier.clone(), vec![self.grpc.clone()])
    }

    /// Stops notify-svc (bridges keep their sockets and retry their links).
    pub async fn stop_svc(&mut self) {
        if let Some(mut svc) = self.svc.take() {
            svc.stop().await.unwrap();
        }
    }

    /// Stops notify-svc and starts a new one on the same address and database.
    pub async fn restart_svc(&mut self) {
        self.stop_svc().await;
        let addr = self.grpc.trim_start_matches("http://").to_owned();
        let listener = test_support::rebind(&addr).await;
        let mut config = notify_svc::Config::for_database(&self.db.url).unwrap();
        config.users = Some(self.verifier.clone());
        self.svc = Some(InProcessSvc::start_on(config, listener).await);
    }

    pub fn token(&self, user: &str) -> String {
        self.issuer.mint(&DevToken::access(user)).unwrap()
    }

    pub async fn connect(&self, user: &str, query: &str) -> Client {
        self.connect_to(&self.ws, user, query).await
    }

    pub async fn connect_to(&self, ws: &str, user: &str, query: &str) -> Client {
        let mut req = format!("{ws}{query}").into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token(user)).parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        Client { ws }
    }

    /// Connects `user` as a client about to stop reading (a small receive
    /// buffer: see [`test_support::stalling_stream`]).
    pub async fn connect_stalling(&self, user: &str) -> Client {
        self.connect_stalling_to(&self.ws, user).await
    }

    /// [`connect_stalling`](Self::connect_stalling) to another bridge.
    pub async fn connect_stalling_to(&self, ws: &str, user: &str) -> Client {
        let mut req = ws.into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.token(user)).parse().unwrap(),
        );
        let addr = ws.trim_start_matches("ws://").trim_end_matches("/ws");
        let stream = test_support::stalling_stream(addr.parse().unwrap()).await;
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
        Client { ws }
    }

    /// Connects `user` to `ws` once that bridge takes sockets (a new
    /// bridge answers 503 until its link is attached).
    pub async fn connect_when_ready(&self, ws: &str, user: &str) -> Client {
        let token = self.token(user);
        test_support::eventually("the bridge takes sockets", Duration::from_secs(10), || {
            let mut req = ws.into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            async move {
                Some(Client {
                    ws: tokio_tungstenite::connect_async(req).await.ok()?.0,
                })
            }
        })
        .await
    }

    /// Waits (up to 10 s) until `user` has `n` live connections in
    /// notify-svc's presence; returns them.
    pub async fn until_connections(&self, user: &str, n: usize) -> Vec<pb::Connection> {
        let what = format!("{user} has {n} live connections");
        test_support::eventually(&what, Duration::from_secs(10), || async {
            let mut api = self.api().await;
            let live = api
                .get_presence(presence_req(user))
                .await
                .ok()?
                .into_inner()
                .connections;
            (live.len() == n).then_some(live)
        })
        .await
    }

    pub async fn api(&self) -> NotifyClient<tonic::transport::Channel> {
        NotifyClient::connect(self.grpc.clone()).await.unwrap()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits until the bridge whose ops port is `ops` has `n` notify-svc links.
pub async fn until_links(ops: &str, n: u32) {
    let what = format!("the bridge has {n} links");
    test_support::eventually(&what, Duration::from_secs(20), || async move {
        let links = test_support::prometheus::value_at(ops, "bridge_links_attached").await;
        (links == f64::from(n)).then_some(())
    })
    .await;
}

pub fn history(user: &str) -> pb::HistoryRequest {
    pb::HistoryRequest {
        target: Some(pb::history_request::Target::UserId(user.into())),
        since: 0,
        limit: 1,
        after_acked: false,
    }
}

/// Publishes to a topic once; `subscribed` means routed, so no retries:
/// the answer must already count every subscriber.
pub async fn publish_to_subscribers(
    api: &NotifyClient<tonic::transport::Channel>,
    topic: &str,
    data: &str,
    subscribers: u32,
) -> pb::PublishResponse {
    let r = api
        .clone()
        .publish(to_topic(topic, data))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.delivered, subscribers, "every subscriber is routed");
    r
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// The next frame, `counts` frames passed over.
    pub async fn next(&mut self) -> Value {
        notify_harness::next_json(&mut self.ws).await
    }

    /// The next frame of any type.
    pub async fn next_frame(&mut self) -> Value {
        notify_harness::next_frame(&mut self.ws).await
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
}

pub fn presence_req(user: &str) -> pb::GetPresenceRequest {
    pb::GetPresenceRequest {
        target: Some(pb::get_presence_request::Target::UserId(user.into())),
    }
}

/// Reads until the close frame; its code.
pub async fn closing_code(c: &mut Client) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.ws.next())
            .await
            .ok()??
        {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}
