//! `notify-bench routed`: what routing a client action to a backend costs.
//! C clients each send one frame at a time and wait for its answer, first
//! the bridge's own `ping` (a WebSocket echo on the same bridge, no backend),
//! then an action routed to a no-op `notify.v1.Upstream` backend served by
//! this process. Calls/s and p50/p99 of both, in the same run; the
//! difference is the routing's overhead (a gRPC call and a task per frame).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use notify_auth::{DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, DevToken};
use notify_proto::v1::{
    self as pb,
    upstream_server::{Upstream, UpstreamServer},
};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct RoutedArgs {
    /// The bridge's WebSocket address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws: SocketAddr,
    /// Where the dev key is (the bridge must run with AUTH_DEV=1 on the same one).
    #[arg(long, default_value = ".notify")]
    data_dir: std::path::PathBuf,
    /// Clients, each with one frame in flight.
    #[arg(long, short = 'c', default_value_t = 32)]
    clients: usize,
    /// Measured seconds per phase (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Where the no-op backend listens: the bridge's BRIDGE_ROUTES names it.
    #[arg(long, default_value = "127.0.0.1:50171")]
    backend: SocketAddr,
    /// The routed action's name.
    #[arg(long, default_value = "noop")]
    action: String,
}

/// Answers every routed frame at once with `null`.
struct Noop;

#[tonic::async_trait]
impl Upstream for Noop {
    async fn handle(
        &self,
        _: tonic::Request<pb::HandleRequest>,
    ) -> Result<tonic::Response<pb::HandleResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::HandleResponse::default()))
    }

    async fn on_connect(
        &self,
        _: tonic::Request<pb::ConnectRequest>,
    ) -> Result<tonic::Response<pb::ConnectResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ConnectResponse::default()))
    }
}

/// One phase's figures.
struct Phase {
    calls: u64,
    seconds: f64,
    latency: Histogram<u64>,
}

pub async fn run(args: RoutedArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.backend)
        .await
        .with_context(|| format!("binding the no-op backend on {}", args.backend))?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UpstreamServer::new(Noop))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let issuer =
        DevIssuer::load_or_create(&args.data_dir.join(DEV_KEY_FILE), DEV_ISSUER, DEV_CLIENT_ID)?;
    let mut sockets = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let token = issuer.mint(&DevToken::access(&format!("routed-{i}")))?;
        let source = IpAddr::from([127, 0, 0, 1]);
        sockets.push(crate::ws::connect(args.ws, source, Some(&token), None).await?);
    }
    let ping = r#"{"action":"ping","id":1}"#.to_owned();
    let routed = format!(r#"{{"action":"{}","id":1}}"#, args.action);
    let (sockets, echo) = phase(sockets, ping, &args).await?;
    let (_, routed) = phase(sockets, routed, &args).await?;
    let rate = |p: &Phase| p.calls as f64 / p.seconds;
    let ms = |p: &Phase, q: f64| p.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "round trips, {} clients each with one frame in flight, {} s per phase",
        args.clients, args.seconds
    );
    println!("  phase                       calls/s     p50 ms   p99 ms");
    for (name, p) in [
        ("bridge echo (ping)", &echo),
        ("routed to a no-op backend", &routed),
    ] {
        println!(
            "  {name:<26} {:>9.0} {:>10.3} {:>8.3}",
            rate(p),
            ms(p, 0.5),
            ms(p, 0.99)
        );
    }
    println!(
        "  routed/echo: {:.2} of the calls/s; +{:.3} ms at p50, +{:.3} ms at p99",
        rate(&routed) / rate(&echo),
        ms(&routed, 0.5) - ms(&echo, 0.5),
        ms(&routed, 0.99) - ms(&echo, 0.99)
    );
    Ok(())
}

type Socket = crate::ws::Socket;

/// Every client sends `frame` and waits for its answer, over and over: one
/// second of warm-up, then `seconds` measured.
async fn phase(
    sockets: Vec<Socket>,
    frame: String,
    args: &RoutedArgs,
) -> anyhow::Result<(Vec<Socket>, Phase)> {
    let frame = Arc::new(frame);
    let started = Instant::now();
    let warm = started + Duration::from_secs(1);
    let end = warm + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for mut socket in sockets {
        let frame = frame.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut calls = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                socket.send(Message::text(frame.as_str())).await?;
                loop {
                    let answer = socket.next().await.context("socket closed")??;
                    if let Message::Text(text) = answer
                        && (text.contains("\"pong\"")
                            || text.contains("\"reply\"")
                            || text.contains("\"error\""))
                    {
                        anyhow::ensure!(!text.contains("\"error\""), "refused: {text}");
                        break;
                    }
                }
                if sent >= warm {
                    calls += 1;
                    latency.record(sent.elapsed().as_micros().max(1) as u64)?;
                }
            }
            anyhow::Ok((socket, calls, latency))
        }));
    }
    let mut sockets = Vec::new();
    let mut total = Phase {
        calls: 0,
        seconds: args.seconds as f64,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for task in tasks {
        let (socket, calls, latency) = task.await??;
        sockets.push(socket);
        total.calls += calls;
        total.latency.add(&latency)?;
    }
    Ok((sockets, total))
}
