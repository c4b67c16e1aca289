//! The WebSocket server a fan-out bench measures: the bridge (RS256 dev
//! tokens, durable publishes through notify-svc's gRPC API) or the plain Node
//! `ws` peer (`crates/bench/peer`: no token, publishes over HTTP, stores
//! nothing). The load tool is the same for both; only how a client is let in
//! and how a message is published differ.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, bail};
use http_body_util::Full;
use hyper::body::Bytes;
use notify_auth::{DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, DevToken};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use tonic::transport::Channel;

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Where a bridge bench finds the platform: the bridge, notify-svc and the
/// dev key the bridge checks tokens with.
#[derive(clap::Args)]
pub struct BridgeArgs {
    /// The bridge's WebSocket address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub ws: SocketAddr,
    /// notify-svc gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub grpc: String,
    /// Where the dev key is (the bridge must run with AUTH_DEV=1 on the same one).
    #[arg(long, default_value = ".notify")]
    pub data_dir: std::path::PathBuf,
}

impl BridgeArgs {
    /// RS256 dev tokens for users `{prefix}-0` .. `{prefix}-{n-1}`.
    pub fn tokens(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<String>> {
        let key = self.data_dir.join(DEV_KEY_FILE);
        let issuer = DevIssuer::load_or_create(&key, DEV_ISSUER, DEV_CLIENT_ID)?;
        (0..n)
            .map(|i| Ok(issuer.mint(&DevToken::access(&format!("{prefix}-{i}")))?))
            .collect()
    }
}

/// One server under test.
pub struct UnderTest {
    /// How the figures name it.
    pub name: &'static str,
    /// Its WebSocket address.
    pub ws: SocketAddr,
    /// Its process name in /proc (for CPU and RSS).
    pub process: String,
    /// A bearer token per client, for the bridge; none for the peer.
    pub tokens: Option<Arc<Vec<String>>>,
    /// Clients connect over wss (the bridge with `--ca-file`; the peer is plain).
    pub tls: bool,
    publisher: Publisher,
}

enum Publisher {
    /// Durable: notify-svc commits the message before the bridge sends it.
    Grpc(NotifyClient<Channel>),
    /// `POST /publish?topic=T` to the Node peer.
    Http { client: HttpClient, base: String },
}

impl UnderTest {
    pub async fn bridge(
        ws: SocketAddr,
        process: &str,
        grpc: &str,
        tokens: Arc<Vec<String>>,
        tls: bool,
    ) -> anyhow::Result<Self> {
        let api = NotifyClient::connect(grpc.to_owned())
            .await
            .with_context(|| format!("connecting to notify-svc at {grpc}"))?;
        Ok(Self {
            name: "bridge",
            ws,
            process: process.to_owned(),
            tokens: Some(tokens),
            tls,
            publisher: Publisher::Grpc(api),
        })
    }

    pub fn node_peer(ws: SocketAddr, http: SocketAddr, process: &str) -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Self {
            name: "node ws",
            ws,
            process: process.to_owned(),
            tokens: None,
            tls: false,
            publisher: Publisher::Http {
                client,
                base: format!("http://{http}"),
            },
        }
    }

    /// Publishes `data` (JSON) to `topic`; returns once the server took it
    /// (the bridge: once it is committed).
    pub async fn publish(&self, topic: &str, data: String) -> anyhow::Result<()> {
        match &self.publisher {
            Publisher::Grpc(api) => {
                // A clone shares the channel: publishes may be in flight together.
                api.clone()
                    .publish(pb::PublishRequest {
                        target: Some(pb::publish_request::Target::Topic(topic.to_owned())),
                        event: "bench".into(),
                        data,
                        ..Default::default()
                    })
                    .await?;
            }
            Publisher::Http { client, base } => {
                let req = hyper::Request::post(format!("{base}/publish?topic={topic}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(data)))?;
                let status = client.request(req).await?.status();
                if !status.is_success() {
                    bail!("the peer answered {status}");
                }
            }
        }
        Ok(())
    }
}
